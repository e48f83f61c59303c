// RSLCheckpointUtility (include/rslutil.h) over the C ABI of rsl-ffi.

#include <cstring>
#include <vector>

#include "rslutil.h"
#include "shim_internal.h"

namespace RSLib
{
    void RSLStateMachineCallbacks::WriteCheckpointState(void* ctx, rsl_checkpoint_writer* writer) noexcept
    {
        IRSLCheckpointCreator* creator = static_cast<IRSLCheckpointCreator*>(ctx);
        RSLCheckpointStreamWriter w;
        w.m_writer = writer;
        creator->SaveState(&w);
        w.m_writer = nullptr;
    }

    void RSLCheckpointUtility::SaveCheckpoint(char* directoryName, RSLProtocolVersion version,
                                              unsigned long long lastExecutedSequenceNumber,
                                              unsigned int configurationNumber, RSLMemberSet* memberSet,
                                              IRSLCheckpointCreator* checkpointCreator)
    {
        if (directoryName == nullptr || checkpointCreator == nullptr || lastExecutedSequenceNumber == 0)
        {
            SHIM_FATAL("SaveCheckpoint: directory, creator and a sequence number above 0 are required");
        }
        if (memberSet == nullptr && version > RSLProtocolVersion_2)
        {
            SHIM_FATAL("SaveCheckpoint: protocol version %d needs a member set", static_cast<int>(version));
        }
        shim::CMemberSet set;
        if (memberSet != nullptr)
        {
            set = shim::ToCMemberSet(*memberSet);
        }
        const rsl_status st = rsl_checkpoint_save(directoryName, static_cast<uint32_t>(version),
                                                  lastExecutedSequenceNumber, configurationNumber,
                                                  set.nodes.empty() ? nullptr : set.nodes.data(), set.nodes.size(),
                                                  set.cookie, set.cookieLen,
                                                  &RSLStateMachineCallbacks::WriteCheckpointState, checkpointCreator);
        if (st != RSL_SUCCESS)
        {
            const std::string cause = rsl_last_error();
            SHIM_FATAL("SaveCheckpoint(%s, v%d, %llu) failed (status %d): %s", directoryName, static_cast<int>(version),
                        lastExecutedSequenceNumber, static_cast<int>(st), cause.c_str());
        }
    }

    bool RSLCheckpointUtility::ChangeReplicaSet(const char* checkpointName, const RSLMemberSet* memberSet)
    {
        if (checkpointName == nullptr || memberSet == nullptr)
        {
            return false;
        }
        const shim::CMemberSet set = shim::ToCMemberSet(*memberSet);
        const rsl_status st = rsl_checkpoint_change_replica_set(checkpointName, set.nodes.data(), set.nodes.size(),
                                                                set.cookie, set.cookieLen);
        if (st != RSL_SUCCESS)
        {
            const std::string cause = rsl_last_error();
            SHIM_LOG(CallBackLogLevel_Error, "ChangeReplicaSet(%s) failed (status %d): %s", checkpointName,
                      static_cast<int>(st), cause.c_str());
            return false;
        }
        return true;
    }

    namespace
    {
        bool Migrate(const char* checkpointName, RSLProtocolVersion version, const RSLMemberSet* memberSet)
        {
            if (checkpointName == nullptr || memberSet == nullptr)
            {
                return false;
            }
            const shim::CMemberSet set = shim::ToCMemberSet(*memberSet);
            const rsl_status st = rsl_checkpoint_migrate(checkpointName, static_cast<uint32_t>(version), set.nodes.data(),
                                                         set.nodes.size(), set.cookie, set.cookieLen);
            if (st != RSL_SUCCESS)
            {
                const std::string cause = rsl_last_error();
                SHIM_LOG(CallBackLogLevel_Error, "MigrateToVersion%d(%s) failed (status %d): %s",
                          static_cast<int>(version), checkpointName, static_cast<int>(st), cause.c_str());
                return false;
            }
            return true;
        }
    } // namespace

    bool RSLCheckpointUtility::MigrateToVersion3(const char* checkpointName, const RSLMemberSet* memberSet)
    {
        return Migrate(checkpointName, RSLProtocolVersion_3, memberSet);
    }

    bool RSLCheckpointUtility::MigrateToVersion4(const char* checkpointName, const RSLMemberSet* memberSet)
    {
        return Migrate(checkpointName, RSLProtocolVersion_4, memberSet);
    }

    bool RSLCheckpointUtility::GetReplicaSet(const char* checkpointName, RSLMemberSet* memberSet)
    {
        if (checkpointName == nullptr || memberSet == nullptr)
        {
            return false;
        }
        const rsl_status st = shim::ReadMemberSet(
            memberSet, [&](rsl_node* nodes, size_t cap, size_t* count, void* cookie, uint32_t* cookieLen) {
                return rsl_checkpoint_get_replica_set(checkpointName, nodes, cap, count, cookie, cookieLen);
            });
        return st == RSL_SUCCESS;
    }

    DWORD RSLCheckpointUtility::GetLatestCheckpoint(const char* directoryName, char* buf, size_t bufSize)
    {
        if (directoryName == nullptr || buf == nullptr || bufSize == 0)
        {
            return ERROR_INVALID_PARAMETER;
        }
        switch (rsl_checkpoint_get_latest(directoryName, buf, bufSize))
        {
        case RSL_SUCCESS:
            return NO_ERROR;
        case RSL_E_BUFFER:
            return ERROR_INSUFFICIENT_BUFFER;
        case RSL_E_IO:
            return ERROR_FILE_NOT_FOUND;
        default:
            return ERROR_INVALID_PARAMETER;
        }
    }
} // namespace RSLib
