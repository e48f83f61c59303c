/*
 * rslutil.h: offline checkpoint tools of the RSLib C++ API (namespace RSLib),
 * source-compatible with the original header.
 */
#pragma once
#ifndef RSL_CPP_SHIM_RSLUTIL_H
#define RSL_CPP_SHIM_RSLUTIL_H

#include "rsl.h"

namespace RSLib
{
    /* Supplies the application data of a checkpoint written by RSLCheckpointUtility. */
    class RSL_IMPORT_EXPORT IRSLCheckpointCreator
    {
    public:
        virtual ~IRSLCheckpointCreator() {}
        virtual void SaveState(RSLCheckpointStreamWriter* writer) = 0;
    };

    class RSL_IMPORT_EXPORT RSLCheckpointUtility
    {
    public:
        /* Writes <directoryName>/<lastExecutedSequenceNumber>.codex, a checkpoint a replica
           can start from (for seeding a new ring). As in RSL, a bad argument or an I/O error
           is fatal: the message goes to the log and stderr, and the process aborts. */
        static void SaveCheckpoint(char* directoryName, RSLProtocolVersion version,
                                   unsigned long long lastExecutedSequenceNumber, unsigned int configurationNumber,
                                   RSLMemberSet* memberSet, IRSLCheckpointCreator* checkpointCreator);
        /* Replaces the member set stored in a v3+ checkpoint (atomically). */
        static bool ChangeReplicaSet(const char* checkpointName, const RSLMemberSet* memberSet);
        /* ChangeReplicaSet that also raises the checkpoint's version to 3 (numeric ids) or 4
           (string ids, checksummed blocks); a v1/v2 checkpoint gets configuration 1 from
           decree 0 with the set. */
        static bool MigrateToVersion3(const char* checkpointName, const RSLMemberSet* memberSet);
        static bool MigrateToVersion4(const char* checkpointName, const RSLMemberSet* memberSet);
        /* Reads the member set (and its cookie) stored in a v3+ checkpoint. */
        static bool GetReplicaSet(const char* checkpointName, RSLMemberSet* memberSet);
        /* The full path of the newest <n>.codex in directoryName: NO_ERROR,
           ERROR_FILE_NOT_FOUND, ERROR_INSUFFICIENT_BUFFER or ERROR_INVALID_PARAMETER. */
        static DWORD GetLatestCheckpoint(const char* directoryName, char* buf, size_t bufSize);

    private:
        RSLCheckpointUtility();
    };
} // namespace RSLib

#endif /* RSL_CPP_SHIM_RSLUTIL_H */
