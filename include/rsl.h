/*
 * rsl.h: the RSLib C++ API (namespace RSLib) of Azure's Replicated State Library,
 * source-compatible with the original header, implemented over the C ABI in rsl_ffi.h.
 *
 * A service written against the original compiles unchanged once its
 * `#include <windows.h>` is removed: the Windows types the API uses are defined below
 * (only when the compiler is not targeting Windows and nobody defined them first).
 * Link with `pkg-config --libs rsl` (one library: engine, C ABI and this shim).
 *
 * Where this implementation behaves differently from the original on purpose, the
 * declaration says so; docs/migrating.md has the full list.
 */
#pragma once
#ifndef RSL_CPP_SHIM_RSL_H
#define RSL_CPP_SHIM_RSL_H

#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <vector>

/* The library's version (the workspace version in Cargo.toml; rsl_ffi.h defines the same
 * three). The SONAME's number is RSL_VERSION_MAJOR. tests/examples.rs checks them. */
#define RSL_VERSION_MAJOR 0
#define RSL_VERSION_MINOR 1
#define RSL_VERSION_PATCH 0

/* ------------------------------------------------------------------------------------------
 * Portable stand-ins for the Windows types and constants the API (and services written
 * against it) take from <windows.h>. Each one is skipped on Windows or if already defined.
 * ---------------------------------------------------------------------------------------- */

/* Length of RSLConfigParam::m_workingDir is RSL_MAX_PATH + 1 whatever MAX_PATH is. */
#define RSL_MAX_PATH 4096

#if !defined(_WIN32)

#ifndef MAX_PATH
#define MAX_PATH RSL_MAX_PATH
#endif

#ifndef __stdcall
#define __stdcall
#endif
#ifndef __cdecl
#define __cdecl
#endif
#ifndef WINAPI
#define WINAPI
#endif

/* Skipped when a Windows header (or Wine's) already declared them. */
#if !defined(RSL_WINDOWS_TYPES_DEFINED) && !defined(_WINDEF_) && !defined(_MINWINDEF_) && !defined(_WINDOWS_)
#define RSL_WINDOWS_TYPES_DEFINED
typedef uint8_t BYTE;
typedef uint16_t WORD;
typedef uint32_t DWORD;
typedef int BOOL;
typedef unsigned int UINT;
typedef int32_t INT32;
typedef uint32_t UINT32;
typedef int64_t INT64;
typedef uint64_t UINT64;
typedef int64_t LONGLONG;
typedef uint64_t ULONGLONG;
typedef int32_t HRESULT;
#endif

/* The fixed-width names RSL's own sources use. */
#ifndef RSL_UINT_TYPES_DEFINED
#define RSL_UINT_TYPES_DEFINED
typedef uint64_t UInt64;
typedef int64_t Int64;
typedef uint32_t UInt32;
typedef int32_t Int32;
typedef uint16_t UInt16;
typedef int16_t Int16;
typedef uint8_t UInt8;
typedef int8_t Int8;
#endif

#ifndef TRUE
#define TRUE 1
#endif
#ifndef FALSE
#define FALSE 0
#endif

/* Win32 error codes returned by the checkpoint streams and GetLatestCheckpoint. */
#ifndef NO_ERROR
#define NO_ERROR 0
#endif
#ifndef ERROR_SUCCESS
#define ERROR_SUCCESS 0
#endif
#ifndef ERROR_FILE_NOT_FOUND
#define ERROR_FILE_NOT_FOUND 2
#endif
#ifndef ERROR_CRC
#define ERROR_CRC 23
#endif
#ifndef ERROR_HANDLE_EOF
#define ERROR_HANDLE_EOF 38
#endif
#ifndef ERROR_INVALID_PARAMETER
#define ERROR_INVALID_PARAMETER 87
#endif
#ifndef ERROR_INSUFFICIENT_BUFFER
#define ERROR_INSUFFICIENT_BUFFER 122
#endif

#ifndef S_OK
#define S_OK ((HRESULT)0)
#endif
#ifndef E_FAIL
#define E_FAIL ((HRESULT)0x80004005L)
#endif

#if !defined(_SYSTEMTIME_) && !defined(RSL_SYSTEMTIME_DEFINED) && !defined(_WINBASE_) && !defined(_MINWINBASE_) && \
    !defined(_WINDOWS_)
#define _SYSTEMTIME_
#define RSL_SYSTEMTIME_DEFINED
/* UTC calendar time, field for field as Win32's; all zero means "never". */
typedef struct _SYSTEMTIME {
    WORD wYear;
    WORD wMonth;
    WORD wDayOfWeek;
    WORD wDay;
    WORD wHour;
    WORD wMinute;
    WORD wSecond;
    WORD wMilliseconds;
} SYSTEMTIME, *PSYSTEMTIME, *LPSYSTEMTIME;
#endif

#endif /* !_WIN32 */

#if defined(_WIN32)
#define RSL_IMPORT_EXPORT
#else
#define RSL_IMPORT_EXPORT __attribute__((visibility("default")))
#endif
#ifndef STDCALL
#define STDCALL __stdcall
#endif

/* The opaque handles of the C ABI (rsl_ffi.h), named here so the classes can hold them. */
struct rsl_replica;
struct rsl_checkpoint_reader;
struct rsl_checkpoint_writer;

namespace RSLibImpl
{
    /* A checkpoint's header; internal, as in RSL (the streams' Init overloads take one). */
    class CheckpointHeader;
}

namespace RSLib
{
    /* Process-wide notification, as in RSL: an assert (formatted message; only when no
       LogEntryCallback is installed; the process then aborts), and a failed Initialize
       (level Error, `title` RSL's: "Could not load config", "Failed to restore state" or
       "Initialize failed"; `message`, NULL in RSL, the cause: the directory, address, value
       or file at fault, as rsl_last_error() gives it, or for a field the shim cannot convert
       to the C ABI's type, that field and its value). The strings live only during the call. */
    typedef void (*NotificationsCallback)(int level, int logId, const char* title, const char* message);

    typedef enum
    {
        CallBackLogLevel_Debug = 0,
        CallBackLogLevel_Info = 1,
        CallBackLogLevel_Status = 2,
        CallBackLogLevel_Warning = 3,
        CallBackLogLevel_Error = 4,
        CallBackLogLevel_Alert = 5,
        CallBackLogLevel_Assert = 6
    } CallBackLogLevel;

    /* Receives every log entry. The message arrives already formatted: `fmt` is always "%s"
       and `args` holds the message, so vsnprintf(buf, n, fmt, args) yields it. */
    typedef void (*LogEntryCallback)(const char* file, const char* function, int line, int logId,
                                     CallBackLogLevel level, const char* title, const char* fmt, va_list args);

    /* Process initialisation: call once before any Initialize or Replay. `debugLogPath`
       (may be NULL) is where RSL's own log files go. Returns false on failure. */
    RSL_IMPORT_EXPORT bool STDCALL RSLInit(const char* debugLogPath, bool logDebugMessages = false,
                                           NotificationsCallback callback = NULL,
                                           LogEntryCallback logEntryCallback = NULL);
    /* Accepted for compatibility; fatal errors abort the process (core dump) either way. */
    RSL_IMPORT_EXPORT void STDCALL SetMinidumpEnabled(bool enabled);
    /* Mutual TLS on every RSL port of replicas initialized afterwards (rsl_set_thumbprints_for_ssl and
       rsl_set_subject_names_for_ssl in rsl_ffi.h say how): the local certificate is
       <dir>/<THUMBPRINT>.crt and .key (PEM), dir from rsl_set_tls_dir, else $RSL_TLS_DIR, else
       /etc/rsl/tls. checkCertificateRevocation is not supported (logged). False for a malformed
       thumbprint (logged). */
    RSL_IMPORT_EXPORT bool STDCALL SetThumbprintsForSsl(const char* pThumbPrintA, const char* pThumbPrintB,
                                                        bool validateCAChain, bool checkCertificateRevocation);
    RSL_IMPORT_EXPORT bool STDCALL SetSubjectNamesForSsl(const char* pSubjectA, const char* pThumbPrintsParentA,
                                                         const char* pSubjectB, const char* pThumbPrintsParentB,
                                                         bool considerIdentitiesWhitelist);
    /* Replicas bind their ports on every interface (0.0.0.0) instead of their own address. */
    RSL_IMPORT_EXPORT void STDCALL EnableListenOnAllIPs();
    /* Call after every state machine is unloaded. Nothing global needs stopping: a no-op. */
    RSL_IMPORT_EXPORT void STDCALL RSLUnload();

    class RSLCheckpointStreamWriter;
    class RSLStateMachine;
    class RSLCheckpointUtility;
    struct RSLStateMachineCallbacks;

    /* Reads the application's part of a checkpoint. Every `unsigned int` result is a Win32
       code: NO_ERROR, ERROR_HANDLE_EOF at the end, ERROR_CRC on a bad block checksum,
       ERROR_INVALID_PARAMETER on a bad argument or an unopened reader. */
    class RSL_IMPORT_EXPORT RSLCheckpointStreamReader
    {
    public:
        RSLCheckpointStreamReader();
        ~RSLCheckpointStreamReader();

        /* Points *ppvBuffer at up to dwNumBytes bytes (valid until the next call) and sets
           *pcbRead; a read may be short at a 4 MB block boundary, so loop. */
        unsigned int GetDataPointer(void** ppvBuffer, unsigned long dwNumBytes, unsigned long* pcbRead);
        unsigned int GetDataPointer(void** ppvBuffer, unsigned long dwNumBytes, unsigned int* pcbRead);
        /* Copies up to dwNumBytes bytes into pvBuffer; may return fewer. */
        unsigned int GetData(void* pvBuffer, unsigned long dwNumBytes, unsigned long* pcbRead);
        unsigned int GetData(void* pvBuffer, unsigned long dwNumBytes, unsigned int* pcbRead);
        /* Advances by dwNumBytes bytes, checking checksums on the way. */
        unsigned int Skip(unsigned long dwNumBytes);
        /* Moves to an absolute offset in the application data. */
        unsigned int Seek(unsigned long long offset);
        /* Length of the application data. */
        unsigned long long Size();
        /* Opens a checkpoint file (for tools); the reader closes it when destroyed. */
        unsigned int Init(const char* file);
        /* The file given to Init, or NULL. Owned by the reader. */
        char* GetFileName();
        /* Opens `file`, which must be the checkpoint `header` describes (else ERROR_CRC).
           A reader opened this way has no writer for CreateWriterForThisReader. */
        unsigned int Init(const char* file, RSLibImpl::CheckpointHeader* header);
        /* A writer of a new checkpoint `file` (which must not exist) with this reader's
           header, for rewriting the payload; NULL unless opened with Init(file), or if the
           file cannot be created. The caller deletes it after CloseWriterForThisReader. */
        RSLCheckpointStreamWriter* CreateWriterForThisReader(const char* file);
        /* Completes the file of a writer from CreateWriterForThisReader (its size and last
           checksum); aborts if that fails, as RSL does. Does not delete the writer. */
        void CloseWriterForThisReader(const char* file, RSLCheckpointStreamWriter* writer);

    private:
        RSLCheckpointStreamReader(const RSLCheckpointStreamReader&) = delete;
        RSLCheckpointStreamReader& operator=(const RSLCheckpointStreamReader&) = delete;
        void Close();

        ::rsl_checkpoint_reader* m_reader;
        bool m_owned;
        char* m_filename;
        /* The header read by Init(file), for CreateWriterForThisReader. */
        RSLibImpl::CheckpointHeader* m_context;

        friend struct RSLStateMachineCallbacks;
    };

    /* Writes the application's part of a checkpoint (RSL adds the block checksums).
       Write returns NO_ERROR or a Win32/OS error code. */
    class RSL_IMPORT_EXPORT RSLCheckpointStreamWriter
    {
    public:
        RSLCheckpointStreamWriter();
        ~RSLCheckpointStreamWriter();

        unsigned int Write(const void* pbWrite, unsigned long cbWrite);

        /* Creates `file` (which must not exist) for a checkpoint with `header`'s fields. */
        unsigned int Init(const char* file, RSLibImpl::CheckpointHeader* header);
        /* Completes the file of Init: the last block's checksum, the header with the final
           size, synced. ERROR_INVALID_PARAMETER for a writer RSL handed to SaveState. A
           writer destroyed without Close leaves its file incomplete. */
        unsigned int Close();

    private:
        RSLCheckpointStreamWriter(const RSLCheckpointStreamWriter&) = delete;
        RSLCheckpointStreamWriter& operator=(const RSLCheckpointStreamWriter&) = delete;

        ::rsl_checkpoint_writer* m_writer;
        /* Whether m_writer came from Init (this object frees it). */
        bool m_owned;

        friend struct RSLStateMachineCallbacks;
        friend class RSLCheckpointUtility;
    };

    enum RSLResponseCode
    {
        RSLSuccess = 0,
        RSLFastReadStale = 1,
        RSLNotPrimary = 2,
        RSLShuttingDown = 3,
        RSLAlreadyBootstrapped = 4,
        RSLBootstrapFailed = 5,
        RSLInvalidParameter = 6,
    };

    enum ThreadPriority
    {
        Priority_Normal = 0,
        Priority_AboveNormal = 1,
        Priority_BelowNormal = 2,
        Priority_Highest = 3,
        Priority_Lowest = 4,
        Priority_OutOfGC = 16,
    };

    /* Thread-creation hook. Accepted by Initialize and not used: the library owns its threads. */
    typedef void (*SpawnRoutine)(unsigned int(__stdcall*)(void*), ThreadPriority, void*);

    /* Protocol versions 1..6 are the original's, with the same wire and disk formats. */
    enum RSLProtocolVersion
    {
        RSLProtocolVersion_1 = 1,
        RSLProtocolVersion_2 = 2,
        RSLProtocolVersion_3 = 3,
        RSLProtocolVersion_4 = 4,
        RSLProtocolVersion_5 = 5,
        RSLProtocolVersion_6 = 6,
    };
    /* Ours: v6 plus pipelining (RSLConfigParam::m_pipelineWindow decrees in flight). Every
       replica of a ring must run this library to use it. Kept out of the enum so that a
       service's switch over RSLProtocolVersion still covers every enumerator. */
    static const RSLProtocolVersion RSLProtocolVersion_7 = static_cast<RSLProtocolVersion>(7);

    /* One replica: its id, address and ports. Plain data. */
    class RSL_IMPORT_EXPORT RSLNode
    {
    public:
        static constexpr size_t MaxMemberIdLength = 63;

        char m_memberIdString[MaxMemberIdLength + 1];
        char m_hostName[256];
        unsigned int m_ip;             /* IPv4, network byte order (inet_addr); 0 = unresolved */
        unsigned short m_rslPort;      /* host byte order */
        unsigned short m_rslLearnPort; /* host byte order; 0 = m_rslPort + 1 */
        unsigned short m_appPort;      /* deprecated */
        unsigned int m_priority;       /* deprecated */

        RSLNode() : m_ip(0), m_rslPort(0), m_rslLearnPort(0), m_appPort(0), m_priority(0)
        {
            m_memberIdString[0] = '\0';
            m_hostName[0] = '\0';
        }

        /* The id as a decimal number (protocol versions 1..3 use numeric ids). */
        void SetMemberIdAsUInt64(unsigned long long memberId);
        /* 0 for an empty id; a non-numeric id is a fatal error, as in RSL. */
        unsigned long long GetMemberIdAsUInt64();
        static unsigned long long ParseMemberIdAsUInt64(const char* memberId);
    };

    /* One replica's health, as seen by the primary (docs/migrating.md, "Health and statistics"). */
    class RSL_IMPORT_EXPORT ReplicaHealth
    {
    public:
        char m_memberId[RSLNode::MaxMemberIdLength + 1];
        bool m_isPrimary;
        bool m_connected;
        long m_numOutstanding;
        SYSTEMTIME m_failedAt;
        SYSTEMTIME m_lastRequestSentAt;
        SYSTEMTIME m_lastRequestVotedAt;
        unsigned long long m_lastRequestVotedDecree;
        unsigned int m_consecutiveFailures;
        bool m_needsResolve;
        unsigned long long m_lastVotePayload;

        ReplicaHealth() { m_memberId[0] = '\0'; }
    };

    /* A growable array of nodes with value semantics. */
    class RSL_IMPORT_EXPORT RSLNodeCollection
    {
    public:
        RSLNodeCollection();
        RSLNodeCollection(const RSLNodeCollection& other);
        ~RSLNodeCollection();
        RSLNodeCollection& operator=(const RSLNodeCollection& other);

        size_t Count() const;
        void Append(const RSLNode& node);
        /* Removes one node; an index out of range is a fatal error. */
        void Remove(size_t index);
        /* A node by index (below Count(); out of range is a fatal error). */
        RSLNode& operator[](size_t index) const;
        void Clear();

    private:
        std::vector<RSLNode>* m_nodes;
    };

    /* Deprecated vector form of a node list. */
    typedef std::vector<RSLNode> RSLNodeArray;

    /* The cookie a replica about to stand for election attaches to its Prepares and Votes
       (see RSLStateMachine::CanBecomePrimary). */
    class RSL_IMPORT_EXPORT RSLPrimaryCookie
    {
    public:
        RSLPrimaryCookie();
        ~RSLPrimaryCookie();
        /* Copies len bytes (at most 8192; longer cookies are cut). A second call replaces the first. */
        void Set(void* data, unsigned int len);

    private:
        RSLPrimaryCookie(const RSLPrimaryCookie&) = delete;
        RSLPrimaryCookie& operator=(const RSLPrimaryCookie&) = delete;

        std::vector<unsigned char>* m_data;

        friend struct RSLStateMachineCallbacks;
    };

    /* A configuration: the members and the configuration cookie. Not copyable. */
    class RSL_IMPORT_EXPORT RSLMemberSet
    {
    public:
        RSLMemberSet();
        /* Copies the nodes and cookieLength bytes of cookie. */
        RSLMemberSet(const RSLNodeCollection& members, void* cookie, unsigned int cookieLength);
        RSLMemberSet(const RSLNodeArray& members, void* cookie, unsigned int cookieLength);
        ~RSLMemberSet();

        size_t GetNumMembers() const;
        /* Points into the set; valid until the set changes. NULL when out of range. */
        const RSLNode* GetMemberInfo(unsigned short whichMember) const;
        void GetMemberCollection(RSLNodeCollection& nodes) const;
        /* Deprecated. Points into the set; rebuilt by every call. */
        const RSLNodeArray* GetMemberArray() const;
        bool IncludesMember(const char* memberId) const;
        /* Copies the bytes; the cookie travels with the set (reconfiguration votes, checkpoints). */
        void SetConfigurationCookie(void* cookie, unsigned int cookieLength);
        /* Owned by the set; NULL when there is none. */
        void* GetConfigurationCookie(unsigned int* length) const;

        static constexpr unsigned int s_MaxMemberSetCookieLength = 8192;

    private:
        RSLMemberSet(const RSLMemberSet& other);
        RSLMemberSet& operator=(const RSLMemberSet& other);

        struct Data;
        Data* m_data;

        friend class RSLStateMachine;
        friend class RSLCheckpointUtility;
        friend struct RSLStateMachineCallbacks;
    };

    /* Tunables of one replica; the constructor sets RSL's defaults. */
    struct RSL_IMPORT_EXPORT RSLConfigParam
    {
        RSLConfigParam();

        long long m_newLeaderGracePeriodSec;
        long long m_heartBeatIntervalSec;
        long long m_electionDelaySec;
        long long m_maxElectionRandomizeSec;
        long long m_initializeRetryIntervalSec;
        long long m_prepareRetryIntervalSec;
        long long m_voteRetryIntervalSec;
        long long m_voteMaxOutstandingIntervalSec;
        long long m_cPQueryRetryIntervalSec;
        long long m_maxCheckpointIntervalSec;
        long long m_joinMessagesIntervalSec;
        long long m_maxLogLenMB;
        unsigned int m_sendTimeoutSec;
        unsigned int m_receiveTimeoutSec;
        unsigned int m_maxCacheLengthMB;
        unsigned int m_maxVotesInLog;
        unsigned int m_maxOutstandingPerReplica;
        unsigned int m_maxCheckpoints;
        unsigned int m_maxCheckpointSizeGB;
        unsigned int m_minCheckpointSpaceFileCount;
        unsigned int m_maxLogs;
        unsigned int m_logLenRandomize;
        unsigned int m_electionRandomize;
        unsigned int m_fastReadSeqThreshold;
        unsigned int m_inMemoryExecutionQueueSizeMB;
        unsigned int m_numReaderThreads;
        unsigned int m_maxMessageSizeMB;
        unsigned int m_maxMessageAlertSizeMB;
        bool m_allowPrimaryPromotionWhileCatchingUp;
        char m_workingDir[RSL_MAX_PATH + 1];
        bool m_addMemberIdToWorkingDir;
        bool m_cancelDiskIo;
        bool m_useGlobalAcceptMessagesFlag;

        /* Ours (not in the original): decrees in flight under RSLProtocolVersion_7 (default 1),
           and whether the journal is fdatasync'd before anything is acknowledged (default true). */
        unsigned int m_pipelineWindow;
        bool m_syncWrites;
        /* Ours: how a replica too far behind its peers' logs takes the checkpoint it copied from
           one. true (default), the original's: StateCopied(seq, file, NULL), ShutDown(RSLShuttingDown),
           then the process exits with status 0 (_Exit: no static destructors or atexit handlers)
           and its restart loads the checkpoint. false: LoadState is called in place on this
           running object, which must replace its whole state; then StateCopied, and it goes on. */
        bool m_catchUpByRestart;
        /* Ours: the NVM journal (docs/nvm.md). With a path (relative: inside the replica's data
           directory), a request is acknowledged once its record is in this persistent log, and
           the RSL log files are written from it in the background; empty (default): the file
           journal. m_nvmJournalSizeMB (default 64, 1..1048576) bounds the records acknowledged
           and not yet in the log files. Not with m_syncWrites false. m_nvmJournalPersistence: 0 (default) survives a crash
           of the process only (the page cache holds the log), 1 msyncs at each commit (survives
           power loss), 2 flushes cache lines to persistent memory on a DAX file system
           (survives power loss). */
        char m_nvmJournalPath[RSL_MAX_PATH + 1];
        unsigned int m_nvmJournalSizeMB;
        unsigned int m_nvmJournalPersistence;
    };

    /* Counters since the previous GetStatisticsSnapshot. Set m_cbSizeOfThisStruct first. */
    struct RSL_IMPORT_EXPORT RSLStats
    {
        size_t m_cbSizeOfThisStruct;
        unsigned long long m_cCaptureTimeInMicroseconds;
        unsigned long long m_cDecreesExecuted;
        unsigned long long m_cLogReads;
        unsigned long long m_cLogReadBytes;
        unsigned long long m_cLogReadMicroseconds;
        unsigned int m_cLogReadMaxMicroseconds;
        unsigned long long m_cLogWrites;
        unsigned long long m_cLogWriteBytes;
        unsigned long long m_cLogWriteMicroseconds;
        unsigned int m_cLogWriteMaxMicroseconds;
        unsigned long long m_cVotingTimeMicroseconds;
        unsigned int m_cVotingTimeMaxMicroseconds;
    };

    /* The base class of a replicated state machine. Derive from it, implement the pure
       callbacks, call Initialize. RSL's callback lock: ExecuteFastReadRequest runs on one of
       m_numReaderThreads reader threads and SaveState/TrySaveState on the execute thread, both
       Shared (concurrently with other reads, never with another callback); every other
       callback runs on the execute thread, Exclusive, except CanBecomePrimary and
       AcceptMessageFromReplica (protocol thread) and the restore-time ones (inside
       Initialize / Replay). serializeFastReadsWithReplicates = false behaves as true. */
    class RSL_IMPORT_EXPORT RSLStateMachine
    {
    public:
        RSLStateMachine();
        /* Stops the replica if it still runs (call UnloadThisOne first: callbacks that arrive
           while the derived object is being destroyed are dropped). */
        virtual ~RSLStateMachine();

        /* Legacy form: starts from membersOfInitialConfiguration unless the data directory
           already holds a member set. */
        bool Initialize(RSLConfigParam* cfg, const RSLNodeCollection& membersOfInitialConfiguration,
                        const RSLNode& self, RSLProtocolVersion version, bool serializeFastReadsWithReplicates,
                        SpawnRoutine spawnRoutine = NULL, bool IndependentHeartbeat = false);

        /* Hands primary status over; v5+. Here the process does not exit. */
        void RelinquishPrimary();

        /* True while the replica is a stable primary or secondary; false while it
           initializes, stands for election, waits for Bootstrap or restores. */
        bool IsInStableState();

        bool Initialize(RSLConfigParam* cfg, const RSLNodeArray& membersOfInitialConfiguration, const RSLNode& self,
                        RSLProtocolVersion version, bool serializeFastReadsWithReplicates,
                        SpawnRoutine spawnRoutine = NULL, bool IndependentHeartbeat = false);

        /* v4+ form: restores state (LoadState, then the logged decrees) and starts the replica.
           Without a persisted member set it waits for Bootstrap. */
        bool Initialize(RSLConfigParam* cfg, const RSLNode& self, RSLProtocolVersion version,
                        bool serializeFastReadsWithReplicates, SpawnRoutine spawnRoutine = NULL,
                        bool IndependentHeartbeat = false);

        /* Gives the replica its first member set, then blocks until it has accepted a vote
           of an elected primary: RSLBootstrapFailed after `timeout` seconds. */
        RSLResponseCode Bootstrap(RSLMemberSet* memberSet, unsigned int timeout);

        /* Replaces the configured election delay (randomised again), from the next time an
           election timer is set; not persisted. */
        void ChangeElectionDelay(unsigned int delayInSecs);

        /* UnloadThisOne on every state machine of the process. */
        static void Unload();

        /* Monotonic microseconds. */
        static unsigned long long GetHighResolutionCurrentTickCount();

        /* Read-only replay of a data directory up to maxSeqNo, instead of Initialize. */
        bool Replay(const char* directory, unsigned long long maxSeqNo);
        /* Replay, then a checkpoint of the state reached (SaveState), labelled
           checkpointSeqNo, in checkpointDirectory (which must differ from `directory`), for
           offline recovery. Both extra arguments or neither (the plain Replay then). */
        bool Replay(const char* directory, unsigned long long maxSeqNo, unsigned long long checkpointSeqNo,
                    const char* checkpointDirectory);

        void AttemptPromotion();
        void RelinquishPrimaryStatus();

        /* The request bytes are copied; the cookie comes back exactly once, through
           ExecuteReplicatedRequest or AbortRequest, when the result is RSLSuccess. */
        RSLResponseCode ReplicateRequest(void* request, size_t len, void* cookie);
        RSLResponseCode ReplicateRequestExclusiveVote(void* request, size_t len, void* cookie);
        RSLResponseCode ReplicateRequestExclusiveVote(void* request, size_t len, void* cookie, bool isLastDecree);
        RSLResponseCode FastReadRequest(unsigned long long maxSeenSeqNo, void* request, size_t len, void* cookie);
        RSLResponseCode FastReadRequest(unsigned long long maxSeenSeqNo, void* request, size_t len, void* cookie,
                                        unsigned int timeout);
        /* The set is copied; the cookie stays in this process and comes back through
           NotifyConfigurationChanged or AbortChangeConfiguration. */
        RSLResponseCode ChangeConfiguration(RSLMemberSet* memberSet, void* cookie);
        bool GetConfiguration(RSLMemberSet* membersSet, unsigned int* configuratioNumber = NULL);
        unsigned long long GetCurrentSequenceNumber();
        unsigned long long GetHighestPassedSequenceNumber();
        /* Primary only; returns 0 when filled, else the number of entries needed (self included). */
        unsigned short GetReplicasInformation(unsigned short numEntries, ReplicaHealth* replicaSetHealth);
        bool GetReplicaInformation(ReplicaHealth* replicaHealth);
        void GetCurrentPrimary(RSLNode* node);
        void AllowSaveState(bool yes);
        void SetVotePayload(unsigned long long payload);
        bool IsAnyRequestPendingExecution();
        RSLResponseCode CopyStateFromReplica(void* cookie);
        void GetStatisticsSnapshot(RSLStats* pStats);
        void SetAcceptMessages(bool acceptMessages);
        /* Test hooks, as in RSL: Pause freezes the protocol thread (no timers, no messages
           handled) until Resume; decrees already chosen still execute. Unload resumes. */
        void Pause();
        void Resume();
        /* Stops this replica (ShutDown is called). The process does not exit. */
        void UnloadThisOne();

    protected:
        virtual bool LoadState(RSLCheckpointStreamReader* reader) = 0;
        virtual void BeforeExecuteReplicatedRequests() {}
        virtual void AfterExecuteReplicatedRequests() {}
        virtual void ExecuteReplicatedRequest(void* request, size_t len, void* cookie, bool* saveState) = 0;
        virtual void ExecuteFastReadRequest(void* request, size_t len, void* cookie) = 0;
        virtual void AbortRequest(RSLResponseCode status, void* cookie) = 0;
        virtual void SaveState(RSLCheckpointStreamWriter* writer) = 0;
        virtual bool TrySaveState(RSLCheckpointStreamWriter* writer)
        {
            SaveState(writer);
            return true;
        }
        virtual void NotifyStatus(bool isPrimary) = 0;
        virtual void NotifyConfigurationChanged(void* cookie) = 0;
        virtual void AbortChangeConfiguration(RSLResponseCode status, void* cookie) = 0;
        virtual void NotifyPrimaryRecovered() {}
        virtual bool CanBecomePrimary() { return true; }
        virtual bool CanBecomePrimary(RSLPrimaryCookie* /*cookie*/) { return CanBecomePrimary(); }
        virtual bool AcceptMessageFromReplica(RSLNode* /*node*/, void* /*data*/, unsigned int /*len*/) { return true; }
        virtual void ShutDown(RSLResponseCode status) = 0;
        /* Called for every node handed to Initialize, Bootstrap or ChangeConfiguration whose
           m_ip is 0 (on the calling thread), and on the replica's resolver thread, with no
           lock held (it may block): for every peer at start-up (members restored from disk
           too), for each peer a configuration change adds or moves, then every 30 s and at once after a failed
           connection to a peer, for each peer whose m_ip is 0 or that needs resolving
           (ReplicaHealth::m_needsResolve). Return true with the node's m_ip/m_rslPort/
           m_rslLearnPort where the member is now: a changed address moves it. The default
           keeps a non-zero m_ip and otherwise resolves m_hostName (IPv4). */
        virtual bool ResolveNode(RSLNode* node);
        virtual void StateSaved(unsigned long long /*seqNo*/, const char* /*fileName*/) {}
        virtual void StateCopied(unsigned long long /*seqNo*/, const char* /*fileName*/, void* /*cookie*/) {}

    private:
        RSLStateMachine(const RSLStateMachine&) = delete;
        RSLStateMachine& operator=(const RSLStateMachine&) = delete;

        struct Impl;
        Impl* m_impl;

        friend struct RSLStateMachineCallbacks;
    };

    class RSL_IMPORT_EXPORT RSLUtils
    {
    public:
        /* RSL's 64-bit checksum (a Rabin fingerprint), bit for bit the original's. */
        static unsigned long long CalculateChecksum(const void* blob, const size_t dataSize);
    };
} // namespace RSLib

#endif /* RSL_CPP_SHIM_RSL_H */
