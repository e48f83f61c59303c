// The RSLib C++ API (include/rsl.h) over the C ABI of rsl-ffi (include/rsl_ffi.h).

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "shim_internal.h"

namespace RSLib
{
    // ------------------------------------------------------------------------------------
    // Logging
    // ------------------------------------------------------------------------------------

    namespace
    {
        std::atomic<NotificationsCallback> g_notifications{nullptr};
        // EnableListenOnAllIPs: process-wide, read by every later Initialize.
        std::atomic<bool> g_listenOnAllIps{false};
        std::atomic<LogEntryCallback> g_logEntry{nullptr};

        // RSL's log area of the library (LogID_RSLLIB).
        const int kLogIdRsl = 3;

        // Hands a formatted message to a LogEntryCallback: its `fmt` is "%s" and its
        // va_list holds the message.
        void CallLogEntry(LogEntryCallback cb, const char* file, const char* function, int line, int logId,
                          CallBackLogLevel level, const char* title, const char* fmt, ...)
        {
            va_list args;
            va_start(args, fmt);
            cb(file, function, line, logId, level, title, fmt, args);
            va_end(args);
        }

        // One entry: to the LogEntryCallback if installed; else, as in RSL, only an assert
        // reaches the notifications.
        void Dispatch(const char* file, const char* function, int line, int logId, int32_t level, const char* title,
                      const char* message)
        {
            if (message == nullptr)
            {
                return;
            }
            if (level < CallBackLogLevel_Debug || level > CallBackLogLevel_Assert)
            {
                level = CallBackLogLevel_Error;
            }
            const CallBackLogLevel lvl = static_cast<CallBackLogLevel>(level);
            if (LogEntryCallback cb = g_logEntry.load(std::memory_order_acquire))
            {
                CallLogEntry(cb, file, function, line, logId, lvl, title, "%s", message);
                return;
            }
            if (lvl == CallBackLogLevel_Assert)
            {
                if (NotificationsCallback cb = g_notifications.load(std::memory_order_acquire))
                {
                    cb(level, logId, title, message);
                }
            }
        }

        // The engine's log sink (rsl_init_entries).
        void EngineEntry(const rsl_log_entry* e) noexcept
        {
            if (e != nullptr)
            {
                Dispatch(e->file, e->function, static_cast<int>(e->line), e->log_id, e->level, e->title, e->message);
            }
        }

        std::string VFormat(const char* fmt, va_list args)
        {
            va_list copy;
            va_copy(copy, args);
            char small[512];
            const int n = std::vsnprintf(small, sizeof small, fmt, copy);
            va_end(copy);
            if (n < 0)
            {
                return std::string(fmt);
            }
            if (static_cast<size_t>(n) < sizeof small)
            {
                return std::string(small, static_cast<size_t>(n));
            }
            std::string out(static_cast<size_t>(n) + 1, '\0');
            std::vsnprintf(&out[0], out.size(), fmt, args);
            out.resize(static_cast<size_t>(n));
            return out;
        }
    } // namespace

    namespace shim
    {
        void LogAt(const char* file, const char* function, int line, CallBackLogLevel level, const char* fmt, ...)
        {
            va_list args;
            va_start(args, fmt);
            const std::string msg = VFormat(fmt, args);
            va_end(args);
            if (g_logEntry.load(std::memory_order_acquire) == nullptr && level >= CallBackLogLevel_Warning)
            {
                std::fprintf(stderr, "rsl: %s\n", msg.c_str());
            }
            Dispatch(file, function, line, kLogIdRsl, level, msg.c_str(), msg.c_str());
        }

        void NotifyInitializeFailure(const char* title, const char* cause)
        {
            SHIM_LOG(CallBackLogLevel_Error, "Initialize: %s: %s", title, cause != nullptr ? cause : "(no detail)");
            if (NotificationsCallback cb = g_notifications.load(std::memory_order_acquire))
            {
                cb(CallBackLogLevel_Error, 0, title, cause);
            }
        }

        void FatalAt(const char* file, const char* function, int line, const char* fmt, ...)
        {
            va_list args;
            va_start(args, fmt);
            const std::string msg = VFormat(fmt, args);
            va_end(args);
            std::fprintf(stderr, "rsl: fatal: %s\n", msg.c_str());
            std::fflush(stderr);
            Dispatch(file, function, line, kLogIdRsl, CallBackLogLevel_Assert, msg.c_str(), msg.c_str());
            std::abort();
        }

        // --------------------------------------------------------------------------------
        // Conversions
        // --------------------------------------------------------------------------------

        namespace
        {
            template <size_t N, size_t M>
            void CopyString(char (&dst)[N], const char (&src)[M])
            {
                const size_t n = strnlen(src, M < N ? M : N - 1);
                std::memcpy(dst, src, n);
                std::memset(dst + n, 0, N - n);
            }
        } // namespace

        rsl_node ToNode(const RSLNode& node)
        {
            rsl_node out;
            std::memset(&out, 0, sizeof out);
            CopyString(out.member_id, node.m_memberIdString);
            CopyString(out.host_name, node.m_hostName);
            out.ip = node.m_ip;
            out.rsl_port = node.m_rslPort;
            out.learn_port = node.m_rslLearnPort;
            return out;
        }

        RSLNode FromNode(const rsl_node& node)
        {
            RSLNode out;
            CopyString(out.m_memberIdString, node.member_id);
            CopyString(out.m_hostName, node.host_name);
            out.m_ip = node.ip;
            out.m_rslPort = node.rsl_port;
            out.m_rslLearnPort = node.learn_port;
            return out;
        }

        std::vector<rsl_node> ToNodes(const std::vector<RSLNode>& nodes)
        {
            std::vector<rsl_node> out;
            out.reserve(nodes.size());
            for (const RSLNode& n : nodes)
            {
                out.push_back(ToNode(n));
            }
            return out;
        }

        CMemberSet ToCMemberSet(const RSLMemberSet& set)
        {
            CMemberSet out;
            out.nodes = ToNodes(RSLStateMachineCallbacks::Nodes(set));
            unsigned int len = 0;
            out.cookie = set.GetConfigurationCookie(&len);
            out.cookieLen = out.cookie != nullptr ? len : 0;
            return out;
        }
    } // namespace shim

    namespace
    {
        // Maps an ABI status to a response code; `ifState` is what RSL_E_STATE means for the call.
        RSLResponseCode ToResponse(rsl_status st, RSLResponseCode ifState)
        {
            if (st >= RSL_SUCCESS && st <= RSL_INVALID_PARAMETER)
            {
                return static_cast<RSLResponseCode>(st);
            }
            switch (st)
            {
            case RSL_E_STATE:
                return ifState;
            case RSL_E_NULL:
            case RSL_E_CONFIG:
            case RSL_E_BUFFER:
                return RSLInvalidParameter;
            default:
                return RSLShuttingDown;
            }
        }

        // Logs a configuration error and keeps the first as the cause a failed Initialize
        // reports (its notification's message).
        bool ConfigError(std::string* first, const std::string& what)
        {
            SHIM_LOG(CallBackLogLevel_Error, "Configuration Error: %s", what.c_str());
            if (first->empty())
            {
                *first = what;
            }
            return false;
        }

        // Converts one configuration value, rejecting what does not fit the C field.
        bool Fits32(long long v, const char* name, uint32_t* out, std::string* why)
        {
            if (v < 0 || v > static_cast<long long>(UINT32_MAX))
            {
                return ConfigError(why, std::string(name) + " = " + std::to_string(v) + " is out of range");
            }
            *out = static_cast<uint32_t>(v);
            return true;
        }

        // `why` gets the first value at fault.
        bool ToConfig(const RSLConfigParam& p, rsl_config* c, std::string* why)
        {
            rsl_config_init(c);
            bool ok = true;
            ok &= Fits32(p.m_newLeaderGracePeriodSec, "m_newLeaderGracePeriodSec", &c->new_leader_grace_period_sec, why);
            ok &= Fits32(p.m_heartBeatIntervalSec, "m_heartBeatIntervalSec", &c->heart_beat_interval_sec, why);
            ok &= Fits32(p.m_electionDelaySec, "m_electionDelaySec", &c->election_delay_sec, why);
            ok &= Fits32(p.m_maxElectionRandomizeSec, "m_maxElectionRandomizeSec", &c->max_election_randomize_sec, why);
            ok &= Fits32(p.m_initializeRetryIntervalSec, "m_initializeRetryIntervalSec",
                         &c->initialize_retry_interval_sec, why);
            ok &= Fits32(p.m_prepareRetryIntervalSec, "m_prepareRetryIntervalSec", &c->prepare_retry_interval_sec, why);
            ok &= Fits32(p.m_voteRetryIntervalSec, "m_voteRetryIntervalSec", &c->vote_retry_interval_sec, why);
            ok &= Fits32(p.m_voteMaxOutstandingIntervalSec, "m_voteMaxOutstandingIntervalSec",
                         &c->vote_max_outstanding_interval_sec, why);
            ok &= Fits32(p.m_cPQueryRetryIntervalSec, "m_cPQueryRetryIntervalSec", &c->c_p_query_retry_interval_sec, why);
            if (p.m_maxCheckpointIntervalSec < 0)
            {
                ok = ConfigError(why, "m_maxCheckpointIntervalSec = " + std::to_string(p.m_maxCheckpointIntervalSec) + " is negative");
            }
            else
            {
                c->max_checkpoint_interval_sec = static_cast<uint64_t>(p.m_maxCheckpointIntervalSec);
            }
            ok &= Fits32(p.m_joinMessagesIntervalSec, "m_joinMessagesIntervalSec", &c->join_messages_interval_sec, why);
            ok &= Fits32(p.m_maxLogLenMB, "m_maxLogLenMB", &c->max_log_len_mb, why);
            c->send_timeout_sec = p.m_sendTimeoutSec;
            c->receive_timeout_sec = p.m_receiveTimeoutSec;
            c->max_cache_length_mb = p.m_maxCacheLengthMB;
            c->max_votes_in_log = p.m_maxVotesInLog;
            c->max_outstanding_per_replica = p.m_maxOutstandingPerReplica;
            c->max_checkpoints = p.m_maxCheckpoints;
            c->max_checkpoint_size_gb = p.m_maxCheckpointSizeGB;
            c->min_checkpoint_space_file_count = p.m_minCheckpointSpaceFileCount;
            c->max_logs = p.m_maxLogs;
            c->log_len_randomize = p.m_logLenRandomize;
            c->election_randomize = p.m_electionRandomize;
            c->fast_read_seq_threshold = p.m_fastReadSeqThreshold;
            c->in_memory_execution_queue_size_mb = p.m_inMemoryExecutionQueueSizeMB;
            c->num_reader_threads = p.m_numReaderThreads;
            c->max_message_size_mb = p.m_maxMessageSizeMB;
            c->max_message_alert_size_mb = p.m_maxMessageAlertSizeMB;
            c->allow_primary_promotion_while_catching_up = p.m_allowPrimaryPromotionWhileCatchingUp;
            static_assert(sizeof c->working_dir >= sizeof p.m_workingDir, "working_dir holds m_workingDir");
            const size_t n = strnlen(p.m_workingDir, sizeof p.m_workingDir);
            if (n == sizeof p.m_workingDir)
            {
                ok = ConfigError(why, "m_workingDir is not NUL-terminated");
            }
            else
            {
                std::memset(c->working_dir, 0, sizeof c->working_dir);
                std::memcpy(c->working_dir, p.m_workingDir, n);
            }
            c->add_member_id_to_working_dir = p.m_addMemberIdToWorkingDir;
            c->cancel_disk_io = p.m_cancelDiskIo;
            c->use_global_accept_messages_flag = p.m_useGlobalAcceptMessagesFlag;
            c->pipeline_window = p.m_pipelineWindow;
            c->sync_writes = p.m_syncWrites;
            c->catch_up_by_restart = p.m_catchUpByRestart;
            static_assert(sizeof c->nvm_journal_path >= sizeof p.m_nvmJournalPath, "nvm_journal_path holds m_nvmJournalPath");
            const size_t nvm = strnlen(p.m_nvmJournalPath, sizeof p.m_nvmJournalPath);
            if (nvm == sizeof p.m_nvmJournalPath)
            {
                ok = ConfigError(why, "m_nvmJournalPath is not NUL-terminated");
            }
            else
            {
                std::memset(c->nvm_journal_path, 0, sizeof c->nvm_journal_path);
                std::memcpy(c->nvm_journal_path, p.m_nvmJournalPath, nvm);
            }
            c->nvm_journal_size_mb = p.m_nvmJournalSizeMB;
            c->nvm_journal_persistence = p.m_nvmJournalPersistence;
            c->listen_on_all_ips = g_listenOnAllIps.load(std::memory_order_acquire);
            return ok;
        }

        void ZeroTime(SYSTEMTIME* t) { std::memset(t, 0, sizeof *t); }

        // Unix microseconds as UTC calendar time; 0 (never) stays all zero, as in RSL.
        void ToSystemTime(uint64_t us, SYSTEMTIME* t)
        {
            ZeroTime(t);
            if (us == 0)
            {
                return;
            }
            const time_t secs = static_cast<time_t>(us / 1000000);
            struct tm tm;
            if (gmtime_r(&secs, &tm) == nullptr)
            {
                return;
            }
            t->wYear = static_cast<WORD>(tm.tm_year + 1900);
            t->wMonth = static_cast<WORD>(tm.tm_mon + 1);
            t->wDayOfWeek = static_cast<WORD>(tm.tm_wday);
            t->wDay = static_cast<WORD>(tm.tm_mday);
            t->wHour = static_cast<WORD>(tm.tm_hour);
            t->wMinute = static_cast<WORD>(tm.tm_min);
            t->wSecond = static_cast<WORD>(tm.tm_sec);
            t->wMilliseconds = static_cast<WORD>((us / 1000) % 1000);
        }

        void FillHealth(const rsl_replica_health& h, ReplicaHealth* out)
        {
            const size_t n = strnlen(h.member_id, sizeof h.member_id - 1);
            std::memcpy(out->m_memberId, h.member_id, n);
            out->m_memberId[n] = '\0';
            out->m_isPrimary = h.is_primary;
            out->m_connected = h.connected;
            out->m_numOutstanding = static_cast<long>(std::min<uint64_t>(h.num_outstanding, LONG_MAX));
            ToSystemTime(h.failed_at_us, &out->m_failedAt);
            ToSystemTime(h.last_request_sent_at_us, &out->m_lastRequestSentAt);
            ToSystemTime(h.last_request_voted_at_us, &out->m_lastRequestVotedAt);
            out->m_lastRequestVotedDecree = h.last_request_voted_decree;
            out->m_consecutiveFailures = h.consecutive_failures;
            out->m_needsResolve = h.needs_resolve;
            out->m_lastVotePayload = h.last_vote_payload;
        }

        // Every state machine of the process, for RSLStateMachine::Unload. Never freed, so it
        // outlives static state machines destroyed at exit.
        struct Registry
        {
            std::mutex mutex;
            std::set<RSLStateMachine*> machines;
        };
        Registry& TheRegistry()
        {
            static Registry* registry = new Registry();
            return *registry;
        }
    } // namespace

    // ------------------------------------------------------------------------------------
    // Free functions
    // ------------------------------------------------------------------------------------

    bool STDCALL RSLInit(const char* debugLogPath, bool logDebugMessages, NotificationsCallback callback,
                         LogEntryCallback logEntryCallback)
    {
        g_notifications.store(callback, std::memory_order_release);
        g_logEntry.store(logEntryCallback, std::memory_order_release);
        const rsl_status st = rsl_init_entries(debugLogPath, logDebugMessages, EngineEntry);
        if (st != RSL_SUCCESS)
        {
            const std::string cause = rsl_last_error();
            SHIM_LOG(CallBackLogLevel_Error, "RSLInit failed (status %d): %s", static_cast<int>(st), cause.c_str());
            return false;
        }
        return true;
    }

    void STDCALL SetMinidumpEnabled(bool /*enabled*/) {}

    // Both record process-wide settings read by every later Initialize; the certificate files
    // are found by thumbprint in rsl_set_tls_dir's directory, else $RSL_TLS_DIR, else /etc/rsl/tls.
    bool STDCALL SetThumbprintsForSsl(const char* pThumbPrintA, const char* pThumbPrintB, bool validateCAChain,
                                      bool checkCertificateRevocation)
    {
        return rsl_set_thumbprints_for_ssl(pThumbPrintA, pThumbPrintB, validateCAChain, checkCertificateRevocation);
    }

    bool STDCALL SetSubjectNamesForSsl(const char* pSubjectA, const char* pThumbPrintsParentA,
                                       const char* pSubjectB, const char* pThumbPrintsParentB,
                                       bool considerIdentitiesWhitelist)
    {
        return rsl_set_subject_names_for_ssl(pSubjectA, pThumbPrintsParentA, pSubjectB, pThumbPrintsParentB,
                                             considerIdentitiesWhitelist);
    }

    void STDCALL EnableListenOnAllIPs()
    {
        g_listenOnAllIps.store(true, std::memory_order_release);
    }

    void STDCALL RSLUnload() {}

    // ------------------------------------------------------------------------------------
    // RSLNode, RSLNodeCollection, RSLPrimaryCookie, RSLMemberSet
    // ------------------------------------------------------------------------------------

    void RSLNode::SetMemberIdAsUInt64(unsigned long long memberId)
    {
        std::snprintf(m_memberIdString, sizeof m_memberIdString, "%llu", memberId);
    }

    unsigned long long RSLNode::GetMemberIdAsUInt64()
    {
        return ParseMemberIdAsUInt64(m_memberIdString);
    }

    unsigned long long RSLNode::ParseMemberIdAsUInt64(const char* memberId)
    {
        if (memberId == nullptr || memberId[0] == '\0')
        {
            return 0;
        }
        unsigned long long value = 0;
        for (const char* p = memberId; *p != '\0'; ++p)
        {
            if (*p < '0' || *p > '9')
            {
                SHIM_FATAL("member id '%s' is not a number", memberId);
            }
            const unsigned digit = static_cast<unsigned>(*p - '0');
            if (value > (ULLONG_MAX - digit) / 10)
            {
                SHIM_FATAL("member id '%s' does not fit 64 bits", memberId);
            }
            value = value * 10 + digit;
        }
        return value;
    }

    RSLNodeCollection::RSLNodeCollection() : m_nodes(new std::vector<RSLNode>()) {}

    RSLNodeCollection::RSLNodeCollection(const RSLNodeCollection& other)
        : m_nodes(new std::vector<RSLNode>(*other.m_nodes))
    {
    }

    RSLNodeCollection::~RSLNodeCollection() { delete m_nodes; }

    RSLNodeCollection& RSLNodeCollection::operator=(const RSLNodeCollection& other)
    {
        if (this != &other)
        {
            *m_nodes = *other.m_nodes;
        }
        return *this;
    }

    size_t RSLNodeCollection::Count() const { return m_nodes->size(); }

    void RSLNodeCollection::Append(const RSLNode& node) { m_nodes->push_back(node); }

    void RSLNodeCollection::Remove(size_t index)
    {
        if (index >= m_nodes->size())
        {
            SHIM_FATAL("RSLNodeCollection::Remove(%zu) with %zu nodes", index, m_nodes->size());
        }
        m_nodes->erase(m_nodes->begin() + static_cast<std::ptrdiff_t>(index));
    }

    RSLNode& RSLNodeCollection::operator[](size_t index) const
    {
        if (index >= m_nodes->size())
        {
            SHIM_FATAL("RSLNodeCollection[%zu] with %zu nodes", index, m_nodes->size());
        }
        return (*m_nodes)[index];
    }

    void RSLNodeCollection::Clear() { m_nodes->clear(); }

    RSLPrimaryCookie::RSLPrimaryCookie() : m_data(new std::vector<unsigned char>()) {}

    RSLPrimaryCookie::~RSLPrimaryCookie() { delete m_data; }

    void RSLPrimaryCookie::Set(void* data, unsigned int len)
    {
        if (data == nullptr)
        {
            len = 0;
        }
        const unsigned char* bytes = static_cast<const unsigned char*>(data);
        m_data->assign(bytes, bytes + len);
    }

    struct __attribute__((visibility("hidden"))) RSLMemberSet::Data
    {
        std::vector<RSLNode> nodes;
        std::vector<unsigned char> cookie;
        RSLNodeArray array; // GetMemberArray's copy
    };

    RSLMemberSet::RSLMemberSet() : m_data(new Data()) {}

    RSLMemberSet::RSLMemberSet(const RSLNodeCollection& members, void* cookie, unsigned int cookieLength)
        : m_data(new Data())
    {
        for (size_t i = 0; i < members.Count(); ++i)
        {
            m_data->nodes.push_back(members[i]);
        }
        SetConfigurationCookie(cookie, cookieLength);
    }

    RSLMemberSet::RSLMemberSet(const RSLNodeArray& members, void* cookie, unsigned int cookieLength)
        : m_data(new Data())
    {
        m_data->nodes = members;
        SetConfigurationCookie(cookie, cookieLength);
    }

    RSLMemberSet::~RSLMemberSet() { delete m_data; }

    size_t RSLMemberSet::GetNumMembers() const { return m_data->nodes.size(); }

    const RSLNode* RSLMemberSet::GetMemberInfo(unsigned short whichMember) const
    {
        return whichMember < m_data->nodes.size() ? &m_data->nodes[whichMember] : nullptr;
    }

    void RSLMemberSet::GetMemberCollection(RSLNodeCollection& nodes) const
    {
        nodes.Clear();
        for (const RSLNode& n : m_data->nodes)
        {
            nodes.Append(n);
        }
    }

    const RSLNodeArray* RSLMemberSet::GetMemberArray() const
    {
        m_data->array = m_data->nodes;
        return &m_data->array;
    }

    bool RSLMemberSet::IncludesMember(const char* memberId) const
    {
        if (memberId == nullptr)
        {
            return false;
        }
        for (const RSLNode& n : m_data->nodes)
        {
            if (std::strncmp(n.m_memberIdString, memberId, sizeof n.m_memberIdString) == 0)
            {
                return true;
            }
        }
        return false;
    }

    void RSLMemberSet::SetConfigurationCookie(void* cookie, unsigned int cookieLength)
    {
        if (cookie == nullptr)
        {
            cookieLength = 0;
        }
        const unsigned char* bytes = static_cast<const unsigned char*>(cookie);
        m_data->cookie.assign(bytes, bytes + cookieLength);
    }

    void* RSLMemberSet::GetConfigurationCookie(unsigned int* length) const
    {
        const unsigned int len = static_cast<unsigned int>(m_data->cookie.size());
        if (length != nullptr)
        {
            *length = len;
        }
        return len == 0 ? nullptr : m_data->cookie.data();
    }

    const std::vector<RSLNode>& RSLStateMachineCallbacks::Nodes(const RSLMemberSet& set) { return set.m_data->nodes; }

    void RSLStateMachineCallbacks::Assign(RSLMemberSet& set, const std::vector<RSLNode>& nodes, const void* cookie,
                                          uint32_t cookieLen)
    {
        set.m_data->nodes = nodes;
        const unsigned char* bytes = static_cast<const unsigned char*>(cookie);
        if (bytes == nullptr)
        {
            cookieLen = 0;
        }
        set.m_data->cookie.assign(bytes, bytes + cookieLen);
    }

    // ------------------------------------------------------------------------------------
    // RSLConfigParam
    // ------------------------------------------------------------------------------------

    RSLConfigParam::RSLConfigParam()
        : m_newLeaderGracePeriodSec(15),
          m_heartBeatIntervalSec(2),
          m_electionDelaySec(10),
          m_maxElectionRandomizeSec(1),
          m_initializeRetryIntervalSec(1),
          m_prepareRetryIntervalSec(1),
          m_voteRetryIntervalSec(3),
          m_voteMaxOutstandingIntervalSec(480),
          m_cPQueryRetryIntervalSec(5),
          m_maxCheckpointIntervalSec(0),
          m_joinMessagesIntervalSec(1),
          m_maxLogLenMB(100),
          m_sendTimeoutSec(5),
          m_receiveTimeoutSec(5),
          m_maxCacheLengthMB(50),
          m_maxVotesInLog(10000),
          m_maxOutstandingPerReplica(10),
          m_maxCheckpoints(4),
          m_maxCheckpointSizeGB(0),
          m_minCheckpointSpaceFileCount(0),
          m_maxLogs(10),
          m_logLenRandomize(20),
          m_electionRandomize(10),
          m_fastReadSeqThreshold(0),
          m_inMemoryExecutionQueueSizeMB(0),
          m_numReaderThreads(1),
          m_maxMessageSizeMB(100),
          m_maxMessageAlertSizeMB(0),
          m_allowPrimaryPromotionWhileCatchingUp(false),
          m_addMemberIdToWorkingDir(true),
          m_cancelDiskIo(true),
          m_useGlobalAcceptMessagesFlag(false),
          m_pipelineWindow(1),
          m_syncWrites(true),
          m_catchUpByRestart(true),
          m_nvmJournalSizeMB(64),
          m_nvmJournalPersistence(0)
    {
        std::memset(m_workingDir, 0, sizeof m_workingDir);
        std::memset(m_nvmJournalPath, 0, sizeof m_nvmJournalPath);
    }

    // ------------------------------------------------------------------------------------
    // Checkpoint streams
    // ------------------------------------------------------------------------------------

    namespace
    {
        uint32_t Clamp32(unsigned long n) { return n > UINT32_MAX ? UINT32_MAX : static_cast<uint32_t>(n); }
    } // namespace

    RSLCheckpointStreamReader::RSLCheckpointStreamReader()
        : m_reader(nullptr), m_owned(false), m_filename(nullptr), m_context(nullptr)
    {
    }

    RSLCheckpointStreamReader::~RSLCheckpointStreamReader() { Close(); }

    void RSLCheckpointStreamReader::Close()
    {
        if (m_owned && m_reader != nullptr)
        {
            rsl_checkpoint_reader_close(m_reader);
        }
        m_reader = nullptr;
        m_owned = false;
        delete[] m_filename;
        m_filename = nullptr;
        delete m_context;
        m_context = nullptr;
    }

    unsigned int RSLCheckpointStreamReader::GetDataPointer(void** ppvBuffer, unsigned long dwNumBytes,
                                                           unsigned long* pcbRead)
    {
        if (pcbRead == nullptr)
        {
            return ERROR_INVALID_PARAMETER;
        }
        unsigned int read = 0;
        const unsigned int rc = GetDataPointer(ppvBuffer, dwNumBytes, &read);
        *pcbRead = read;
        return rc;
    }

    unsigned int RSLCheckpointStreamReader::GetDataPointer(void** ppvBuffer, unsigned long dwNumBytes,
                                                           unsigned int* pcbRead)
    {
        if (m_reader == nullptr || ppvBuffer == nullptr || pcbRead == nullptr)
        {
            return ERROR_INVALID_PARAMETER;
        }
        const void* data = nullptr;
        uint32_t read = 0;
        const uint32_t rc = rsl_checkpoint_reader_get_data_pointer(m_reader, &data, Clamp32(dwNumBytes), &read);
        *ppvBuffer = const_cast<void*>(data);
        *pcbRead = read;
        return rc;
    }

    unsigned int RSLCheckpointStreamReader::GetData(void* pvBuffer, unsigned long dwNumBytes, unsigned long* pcbRead)
    {
        if (pcbRead == nullptr)
        {
            return ERROR_INVALID_PARAMETER;
        }
        unsigned int read = 0;
        const unsigned int rc = GetData(pvBuffer, dwNumBytes, &read);
        *pcbRead = read;
        return rc;
    }

    unsigned int RSLCheckpointStreamReader::GetData(void* pvBuffer, unsigned long dwNumBytes, unsigned int* pcbRead)
    {
        if (m_reader == nullptr || pvBuffer == nullptr || pcbRead == nullptr)
        {
            return ERROR_INVALID_PARAMETER;
        }
        uint32_t read = 0;
        const uint32_t rc = rsl_checkpoint_reader_get_data(m_reader, pvBuffer, Clamp32(dwNumBytes), &read);
        *pcbRead = read;
        return rc;
    }

    unsigned int RSLCheckpointStreamReader::Skip(unsigned long dwNumBytes)
    {
        if (m_reader == nullptr)
        {
            return ERROR_INVALID_PARAMETER;
        }
        unsigned long left = dwNumBytes;
        do
        {
            const uint32_t step = Clamp32(left);
            const uint32_t rc = rsl_checkpoint_reader_skip(m_reader, step);
            if (rc != NO_ERROR)
            {
                return rc;
            }
            left -= step;
        } while (left > 0);
        return NO_ERROR;
    }

    unsigned int RSLCheckpointStreamReader::Seek(unsigned long long offset)
    {
        if (m_reader == nullptr)
        {
            return ERROR_INVALID_PARAMETER;
        }
        return rsl_checkpoint_reader_seek(m_reader, offset);
    }

    unsigned long long RSLCheckpointStreamReader::Size()
    {
        return m_reader == nullptr ? 0 : rsl_checkpoint_reader_size(m_reader);
    }

    unsigned int RSLCheckpointStreamReader::Init(const char* file)
    {
        if (file == nullptr)
        {
            return ERROR_INVALID_PARAMETER;
        }
        ::rsl_checkpoint_header* h = nullptr;
        const uint32_t rc = rsl_checkpoint_header_read(file, &h);
        if (rc != NO_ERROR)
        {
            return rc;
        }
        RSLibImpl::CheckpointHeader* header = new RSLibImpl::CheckpointHeader(h);
        const unsigned int opened = Init(file, header);
        if (opened != NO_ERROR)
        {
            delete header;
            return opened;
        }
        m_context = header;
        return NO_ERROR;
    }

    unsigned int RSLCheckpointStreamReader::Init(const char* file, RSLibImpl::CheckpointHeader* header)
    {
        if (file == nullptr || header == nullptr)
        {
            return ERROR_INVALID_PARAMETER;
        }
        Close();
        rsl_checkpoint_reader* reader = nullptr;
        const uint32_t rc = rsl_checkpoint_reader_open_with(file, header->m_header, &reader);
        if (rc != NO_ERROR)
        {
            return rc;
        }
        m_reader = reader;
        m_owned = true;
        const size_t n = std::strlen(file);
        m_filename = new char[n + 1];
        std::memcpy(m_filename, file, n + 1);
        return NO_ERROR;
    }

    char* RSLCheckpointStreamReader::GetFileName() { return m_filename; }

    RSLCheckpointStreamWriter* RSLCheckpointStreamReader::CreateWriterForThisReader(const char* file)
    {
        if (m_context == nullptr)
        {
            return nullptr;
        }
        RSLCheckpointStreamWriter* writer = new RSLCheckpointStreamWriter();
        if (writer->Init(file, m_context) != NO_ERROR)
        {
            delete writer;
            return nullptr;
        }
        return writer;
    }

    void RSLCheckpointStreamReader::CloseWriterForThisReader(const char* file, RSLCheckpointStreamWriter* writer)
    {
        const unsigned int rc = writer != nullptr ? writer->Close() : ERROR_INVALID_PARAMETER;
        if (rc != NO_ERROR)
        {
            SHIM_FATAL("CloseWriterForThisReader(%s) failed (%u)", file != nullptr ? file : "(null)", rc);
        }
    }

    RSLCheckpointStreamWriter::RSLCheckpointStreamWriter() : m_writer(nullptr), m_owned(false) {}

    RSLCheckpointStreamWriter::~RSLCheckpointStreamWriter()
    {
        if (m_owned)
        {
            rsl_checkpoint_writer_free(m_writer);
        }
    }

    unsigned int RSLCheckpointStreamWriter::Init(const char* file, RSLibImpl::CheckpointHeader* header)
    {
        if (file == nullptr || header == nullptr || m_writer != nullptr)
        {
            return ERROR_INVALID_PARAMETER;
        }
        rsl_checkpoint_writer* writer = nullptr;
        const uint32_t rc = rsl_checkpoint_writer_create(file, header->m_header, &writer);
        if (rc != NO_ERROR)
        {
            return rc;
        }
        m_writer = writer;
        m_owned = true;
        return NO_ERROR;
    }

    unsigned int RSLCheckpointStreamWriter::Close()
    {
        if (!m_owned || m_writer == nullptr)
        {
            return ERROR_INVALID_PARAMETER;
        }
        const uint32_t rc = rsl_checkpoint_writer_close(m_writer);
        m_writer = nullptr;
        m_owned = false;
        return rc;
    }

    unsigned int RSLCheckpointStreamWriter::Write(const void* pbWrite, unsigned long cbWrite)
    {
        if (m_writer == nullptr || (pbWrite == nullptr && cbWrite != 0))
        {
            return ERROR_INVALID_PARAMETER;
        }
        const unsigned char* p = static_cast<const unsigned char*>(pbWrite);
        unsigned long left = cbWrite;
        while (left > 0)
        {
            const uint32_t step = left > (1UL << 30) ? (1U << 30) : static_cast<uint32_t>(left);
            const uint32_t rc = rsl_checkpoint_writer_write(m_writer, p, step);
            if (rc != NO_ERROR)
            {
                return rc;
            }
            p += step;
            left -= step;
        }
        return NO_ERROR;
    }

    // ------------------------------------------------------------------------------------
    // RSLStateMachine
    // ------------------------------------------------------------------------------------

    struct __attribute__((visibility("hidden"))) RSLStateMachine::Impl
    {
        std::atomic<rsl_replica*> replica{nullptr};
        // Set by the destructor: the derived object is gone, callbacks are dropped.
        std::atomic<bool> dying{false};
        std::atomic<bool> started{false};
        std::atomic<unsigned long long> replayed{0};
        std::mutex statsMutex;
    };

    namespace
    {
        // The replica's handle, or NULL before Initialize. Inside one of the state machine's own
        // callbacks the handle is always there: before Initialize has returned it (LoadState
        // and the executions that replay the log, the first executions after the start) and
        // inside Replay, the C ABI gives it by the callback's context, so that those callbacks
        // get the answers (GetCurrentSequenceNumber, GetConfiguration, ...) live ones get.
        rsl_replica* Handle(const std::atomic<rsl_replica*>& r, const RSLStateMachine* sm)
        {
            rsl_replica* live = r.load(std::memory_order_acquire);
            return live != nullptr ? live : rsl_replica_of_callback(sm);
        }
    } // namespace

    RSLStateMachine::RSLStateMachine() : m_impl(new Impl())
    {
        Registry& reg = TheRegistry();
        std::lock_guard<std::mutex> lock(reg.mutex);
        reg.machines.insert(this);
    }

    RSLStateMachine::~RSLStateMachine()
    {
        {
            Registry& reg = TheRegistry();
            std::lock_guard<std::mutex> lock(reg.mutex);
            reg.machines.erase(this);
        }
        m_impl->dying.store(true, std::memory_order_release);
        rsl_replica* r = m_impl->replica.exchange(nullptr, std::memory_order_acq_rel);
        rsl_replica_destroy(r);
        delete m_impl;
    }

    bool RSLStateMachine::Initialize(RSLConfigParam* cfg, const RSLNodeCollection& membersOfInitialConfiguration,
                                     const RSLNode& self, RSLProtocolVersion version,
                                     bool serializeFastReadsWithReplicates, SpawnRoutine spawnRoutine,
                                     bool IndependentHeartbeat)
    {
        std::vector<RSLNode> members;
        for (size_t i = 0; i < membersOfInitialConfiguration.Count(); ++i)
        {
            members.push_back(membersOfInitialConfiguration[i]);
        }
        return RSLStateMachineCallbacks::Initialize(this, cfg, &members, self, version, serializeFastReadsWithReplicates, spawnRoutine,
                              IndependentHeartbeat);
    }

    bool RSLStateMachine::Initialize(RSLConfigParam* cfg, const RSLNodeArray& membersOfInitialConfiguration,
                                     const RSLNode& self, RSLProtocolVersion version,
                                     bool serializeFastReadsWithReplicates, SpawnRoutine spawnRoutine,
                                     bool IndependentHeartbeat)
    {
        std::vector<RSLNode> members(membersOfInitialConfiguration);
        return RSLStateMachineCallbacks::Initialize(this, cfg, &members, self, version, serializeFastReadsWithReplicates, spawnRoutine,
                              IndependentHeartbeat);
    }

    bool RSLStateMachine::Initialize(RSLConfigParam* cfg, const RSLNode& self, RSLProtocolVersion version,
                                     bool serializeFastReadsWithReplicates, SpawnRoutine spawnRoutine,
                                     bool IndependentHeartbeat)
    {
        return RSLStateMachineCallbacks::Initialize(this, cfg, nullptr, self, version, serializeFastReadsWithReplicates, spawnRoutine,
                              IndependentHeartbeat);
    }

    std::vector<rsl_node> RSLStateMachineCallbacks::ResolveAll(RSLStateMachine* sm, const std::vector<RSLNode>& nodes)
    {
        std::vector<rsl_node> out;
        out.reserve(nodes.size());
        for (RSLNode n : nodes)
        {
            if (n.m_ip == 0 && !sm->ResolveNode(&n))
            {
                SHIM_LOG(CallBackLogLevel_Warning, "could not resolve replica '%s' (host '%s')", n.m_memberIdString,
                          n.m_hostName);
            }
            out.push_back(shim::ToNode(n));
        }
        return out;
    }

    bool RSLStateMachineCallbacks::Initialize(RSLStateMachine* sm, RSLConfigParam* cfg,
                                              const std::vector<RSLNode>* members, const RSLNode& self,
                                              RSLProtocolVersion version, bool serializeFastReadsWithReplicates,
                                              SpawnRoutine /*spawnRoutine*/, bool /*independentHeartbeat*/)
    {
        if (cfg == nullptr)
        {
            SHIM_LOG(CallBackLogLevel_Error, "Initialize: cfg is NULL");
            return false;
        }
        if (sm->m_impl->started.exchange(true))
        {
            SHIM_LOG(CallBackLogLevel_Error, "Initialize: this state machine was already initialized");
            return false;
        }
        rsl_config c;
        std::string why;
        if (!ToConfig(*cfg, &c, &why))
        {
            shim::NotifyInitializeFailure("Could not load config", why.c_str());
            sm->m_impl->started.store(false);
            return false;
        }
        const std::vector<rsl_node> selfNode = ResolveAll(sm, std::vector<RSLNode>(1, self));
        std::vector<rsl_node> nodes;
        if (members != nullptr)
        {
            if (members->empty())
            {
                SHIM_LOG(CallBackLogLevel_Error, "Initialize: the initial member list is empty");
                sm->m_impl->started.store(false);
                return false;
            }
            nodes = ResolveAll(sm, *members);
        }
        const rsl_callbacks callbacks = RSLStateMachineCallbacks::Table(sm);
        rsl_replica* replica = nullptr;
        const rsl_status st = rsl_replica_initialize(&c, &selfNode[0], static_cast<uint32_t>(version),
                                                     serializeFastReadsWithReplicates, &callbacks,
                                                     nodes.empty() ? nullptr : nodes.data(), nodes.size(), &replica);
        if (st != RSL_SUCCESS || replica == nullptr)
        {
            // Copied at once: the log callback below may call into the library on this thread.
            const std::string cause = rsl_last_error();
            SHIM_LOG(CallBackLogLevel_Error, "Initialize failed (status %d): %s", static_cast<int>(st), cause.c_str());
            shim::NotifyInitializeFailure(st == RSL_E_CONFIG ? "Could not load config"
                                          : st == RSL_E_IO   ? "Failed to restore state"
                                                             : "Initialize failed",
                                          cause.c_str());
            rsl_replica_destroy(replica);
            sm->m_impl->started.store(false);
            return false;
        }
        sm->m_impl->replica.store(replica, std::memory_order_release);
        return true;
    }

    RSLResponseCode RSLStateMachine::Bootstrap(RSLMemberSet* memberSet, unsigned int timeout)
    {
        if (memberSet == nullptr)
        {
            return RSLInvalidParameter;
        }
        rsl_replica* r = Handle(m_impl->replica, this);
        if (r == nullptr)
        {
            return RSLBootstrapFailed;
        }
        unsigned int cookieLen = 0;
        const void* cookie = memberSet->GetConfigurationCookie(&cookieLen);
        const std::vector<rsl_node> nodes = RSLStateMachineCallbacks::ResolveAll(this, RSLStateMachineCallbacks::Nodes(*memberSet));
        const rsl_status st = rsl_replica_bootstrap(r, nodes.data(), nodes.size(), cookie, cookieLen, timeout);
        if (st == RSL_E_IO || st == RSL_E_STATE || st == RSL_E_PANIC)
        {
            return RSLBootstrapFailed;
        }
        return ToResponse(st, RSLBootstrapFailed);
    }

    void RSLStateMachine::ChangeElectionDelay(unsigned int delayInSecs)
    {
        if (rsl_replica* r = Handle(m_impl->replica, this))
        {
            rsl_replica_change_election_delay(r, delayInSecs);
        }
    }

    void RSLStateMachine::Unload()
    {
        Registry& reg = TheRegistry();
        std::lock_guard<std::mutex> lock(reg.mutex);
        for (RSLStateMachine* sm : reg.machines)
        {
            sm->UnloadThisOne();
        }
    }

    unsigned long long RSLStateMachine::GetHighResolutionCurrentTickCount()
    {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return static_cast<unsigned long long>(ts.tv_sec) * 1000000ULL +
               static_cast<unsigned long long>(ts.tv_nsec) / 1000ULL;
    }

    bool RSLStateMachine::Replay(const char* directory, unsigned long long maxSeqNo)
    {
        return Replay(directory, maxSeqNo, 0, nullptr);
    }

    bool RSLStateMachine::Replay(const char* directory, unsigned long long maxSeqNo, unsigned long long checkpointSeqNo,
                                 const char* checkpointDirectory)
    {
        // As RSL: the two checkpoint arguments together or not at all; nothing to do for 0.
        if (directory == nullptr || (checkpointSeqNo == 0) != (checkpointDirectory == nullptr))
        {
            return false;
        }
        if (m_impl->started.exchange(true))
        {
            SHIM_LOG(CallBackLogLevel_Error, "Replay: this state machine was already initialized");
            return false;
        }
        if (maxSeqNo == 0)
        {
            return true;
        }
        RSLConfigParam p;
        const size_t n = std::strlen(directory);
        if (n >= sizeof p.m_workingDir)
        {
            m_impl->started.store(false);
            return false;
        }
        std::memcpy(p.m_workingDir, directory, n + 1);
        p.m_addMemberIdToWorkingDir = false;
        rsl_config c;
        std::string why;
        if (!ToConfig(p, &c, &why))
        {
            m_impl->started.store(false);
            return false;
        }
        const rsl_callbacks callbacks = RSLStateMachineCallbacks::Table(this);
        const uint32_t version = static_cast<uint32_t>(RSLProtocolVersion_6);
        uint64_t last = 0;
        const rsl_status st =
            checkpointDirectory == nullptr
                ? rsl_replay(&c, "0", version, &callbacks, maxSeqNo, &last)
                : rsl_replay_to_checkpoint(&c, "0", version, &callbacks, maxSeqNo, checkpointSeqNo, checkpointDirectory,
                                           &last);
        if (st != RSL_SUCCESS)
        {
            const std::string cause = rsl_last_error();
            SHIM_LOG(CallBackLogLevel_Error, "Replay of %s failed (status %d): %s", directory, static_cast<int>(st),
                     cause.c_str());
            return false;
        }
        m_impl->replayed.store(last);
        return true;
    }

    void RSLStateMachine::AttemptPromotion()
    {
        if (rsl_replica* r = Handle(m_impl->replica, this))
        {
            rsl_replica_attempt_promotion(r);
        }
    }

    void RSLStateMachine::RelinquishPrimary()
    {
        if (rsl_replica* r = Handle(m_impl->replica, this))
        {
            const rsl_status st = rsl_replica_relinquish_primary(r);
            if (st != RSL_SUCCESS)
            {
                const std::string cause = rsl_last_error();
                SHIM_LOG(CallBackLogLevel_Error, "RelinquishPrimary ignored (status %d): %s", static_cast<int>(st),
                         cause.c_str());
            }
        }
    }

    void RSLStateMachine::RelinquishPrimaryStatus() { RelinquishPrimary(); }

    bool RSLStateMachine::IsInStableState()
    {
        // Not while Initialize restores: the replica has not started yet.
        rsl_replica* r = m_impl->replica.load(std::memory_order_acquire);
        return r != nullptr && rsl_replica_is_in_stable_state(r);
    }

    RSLResponseCode RSLStateMachine::ReplicateRequest(void* request, size_t len, void* cookie)
    {
        rsl_replica* r = Handle(m_impl->replica, this);
        if (r == nullptr)
        {
            return RSLShuttingDown;
        }
        return ToResponse(rsl_replica_replicate_request(r, request, len, cookie), RSLNotPrimary);
    }

    RSLResponseCode RSLStateMachine::ReplicateRequestExclusiveVote(void* request, size_t len, void* cookie)
    {
        return ReplicateRequestExclusiveVote(request, len, cookie, false);
    }

    RSLResponseCode RSLStateMachine::ReplicateRequestExclusiveVote(void* request, size_t len, void* cookie,
                                                                   bool isLastDecree)
    {
        rsl_replica* r = Handle(m_impl->replica, this);
        if (r == nullptr)
        {
            return RSLShuttingDown;
        }
        return ToResponse(rsl_replica_replicate_request_exclusive_vote(r, request, len, cookie, isLastDecree),
                          RSLNotPrimary);
    }

    RSLResponseCode RSLStateMachine::FastReadRequest(unsigned long long maxSeenSeqNo, void* request, size_t len,
                                                     void* cookie)
    {
        return FastReadRequest(maxSeenSeqNo, request, len, cookie, 0);
    }

    RSLResponseCode RSLStateMachine::FastReadRequest(unsigned long long maxSeenSeqNo, void* request, size_t len,
                                                     void* cookie, unsigned int timeout)
    {
        rsl_replica* r = Handle(m_impl->replica, this);
        if (r == nullptr)
        {
            return RSLShuttingDown;
        }
        return ToResponse(rsl_replica_fast_read_request(r, maxSeenSeqNo, request, len, cookie, timeout),
                          RSLShuttingDown);
    }

    RSLResponseCode RSLStateMachine::ChangeConfiguration(RSLMemberSet* memberSet, void* cookie)
    {
        if (memberSet == nullptr)
        {
            return RSLInvalidParameter;
        }
        rsl_replica* r = Handle(m_impl->replica, this);
        if (r == nullptr)
        {
            return RSLShuttingDown;
        }
        unsigned int cookieLen = 0;
        const void* setCookie = memberSet->GetConfigurationCookie(&cookieLen);
        if (cookieLen > RSLMemberSet::s_MaxMemberSetCookieLength)
        {
            return RSLInvalidParameter;
        }
        const std::vector<rsl_node> nodes = RSLStateMachineCallbacks::ResolveAll(this, RSLStateMachineCallbacks::Nodes(*memberSet));
        return ToResponse(
            rsl_replica_change_configuration(r, nodes.data(), nodes.size(), setCookie, cookieLen, cookie),
            RSLNotPrimary);
    }

    bool RSLStateMachine::GetConfiguration(RSLMemberSet* membersSet, unsigned int* configuratioNumber)
    {
        if (membersSet == nullptr)
        {
            return false;
        }
        rsl_replica* r = Handle(m_impl->replica, this);
        uint32_t number = 0;
        rsl_status st = RSL_SUCCESS;
        if (r == nullptr)
        {
            RSLStateMachineCallbacks::Assign(*membersSet, std::vector<RSLNode>(), nullptr, 0);
        }
        else
        {
            st = shim::ReadMemberSet(membersSet, [&](rsl_node* nodes, size_t cap, size_t* count, void* cookie,
                                                     uint32_t* cookieLen) {
                return rsl_replica_get_configuration(r, nodes, cap, count, &number, cookie, cookieLen);
            });
            if (st != RSL_SUCCESS)
            {
                RSLStateMachineCallbacks::Assign(*membersSet, std::vector<RSLNode>(), nullptr, 0);
                number = 0;
            }
        }
        if (configuratioNumber != nullptr)
        {
            *configuratioNumber = number;
        }
        return true;
    }

    unsigned long long RSLStateMachine::GetCurrentSequenceNumber()
    {
        rsl_replica* r = Handle(m_impl->replica, this);
        return r != nullptr ? rsl_replica_current_sequence_number(r) : m_impl->replayed.load();
    }

    unsigned long long RSLStateMachine::GetHighestPassedSequenceNumber()
    {
        rsl_replica* r = Handle(m_impl->replica, this);
        return r != nullptr ? rsl_replica_highest_passed_sequence_number(r) : m_impl->replayed.load();
    }

    unsigned short RSLStateMachine::GetReplicasInformation(unsigned short numEntries, ReplicaHealth* replicaSetHealth)
    {
        if (replicaSetHealth == nullptr)
        {
            numEntries = 0;
        }
        for (unsigned short i = 0; i < numEntries; ++i)
        {
            replicaSetHealth[i].m_memberId[0] = '\0';
        }
        rsl_replica* r = Handle(m_impl->replica, this);
        if (r == nullptr)
        {
            return 0;
        }
        std::vector<rsl_replica_health> health(numEntries);
        size_t count = 0;
        const rsl_status st = rsl_replica_get_replicas_information(r, health.data(), health.size(), &count);
        if (st == RSL_E_BUFFER)
        {
            return static_cast<unsigned short>(std::min<size_t>(count, USHRT_MAX));
        }
        if (st != RSL_SUCCESS)
        {
            return 0;
        }
        for (size_t i = 0; i < count && i < numEntries; ++i)
        {
            FillHealth(health[i], &replicaSetHealth[i]);
        }
        return 0;
    }

    bool RSLStateMachine::GetReplicaInformation(ReplicaHealth* replicaHealth)
    {
        rsl_replica* r = Handle(m_impl->replica, this);
        if (replicaHealth == nullptr || r == nullptr)
        {
            return false;
        }
        std::vector<rsl_replica_health> health(8);
        size_t count = 0;
        rsl_status st = rsl_replica_get_replicas_information(r, health.data(), health.size(), &count);
        if (st == RSL_E_BUFFER && count > health.size())
        {
            health.resize(count);
            st = rsl_replica_get_replicas_information(r, health.data(), health.size(), &count);
        }
        if (st != RSL_SUCCESS)
        {
            return false;
        }
        for (size_t i = 0; i < count && i < health.size(); ++i)
        {
            if (std::strncmp(health[i].member_id, replicaHealth->m_memberId, sizeof replicaHealth->m_memberId) == 0)
            {
                FillHealth(health[i], replicaHealth);
                return true;
            }
        }
        return false;
    }

    void RSLStateMachine::GetCurrentPrimary(RSLNode* node)
    {
        if (node == nullptr)
        {
            return;
        }
        *node = RSLNode();
        rsl_replica* r = Handle(m_impl->replica, this);
        if (r == nullptr)
        {
            return;
        }
        rsl_node primary;
        std::memset(&primary, 0, sizeof primary);
        if (rsl_replica_get_current_primary(r, &primary) == RSL_SUCCESS)
        {
            *node = shim::FromNode(primary);
        }
    }

    void RSLStateMachine::AllowSaveState(bool yes)
    {
        if (rsl_replica* r = Handle(m_impl->replica, this))
        {
            rsl_replica_allow_save_state(r, yes);
        }
    }

    void RSLStateMachine::SetVotePayload(unsigned long long payload)
    {
        if (rsl_replica* r = Handle(m_impl->replica, this))
        {
            rsl_replica_set_vote_payload(r, payload);
        }
    }

    bool RSLStateMachine::IsAnyRequestPendingExecution()
    {
        rsl_replica* r = Handle(m_impl->replica, this);
        return r != nullptr && rsl_replica_highest_passed_sequence_number(r) > rsl_replica_current_sequence_number(r);
    }

    RSLResponseCode RSLStateMachine::CopyStateFromReplica(void* cookie)
    {
        rsl_replica* r = Handle(m_impl->replica, this);
        if (r == nullptr)
        {
            return RSLShuttingDown;
        }
        return ToResponse(rsl_replica_copy_state_from_replica(r, cookie), RSLShuttingDown);
    }

    void RSLStateMachine::GetStatisticsSnapshot(RSLStats* pStats)
    {
        if (pStats == nullptr)
        {
            return;
        }
        if (pStats->m_cbSizeOfThisStruct != sizeof(RSLStats))
        {
            SHIM_LOG(CallBackLogLevel_Error, "GetStatisticsSnapshot: m_cbSizeOfThisStruct is %zu, expected %zu",
                      pStats->m_cbSizeOfThisStruct, sizeof(RSLStats));
            return;
        }
        std::memset(pStats, 0, sizeof *pStats);
        pStats->m_cbSizeOfThisStruct = sizeof(RSLStats);
        rsl_replica* r = Handle(m_impl->replica, this);
        if (r == nullptr)
        {
            return;
        }
        rsl_stats s;
        std::memset(&s, 0, sizeof s);
        std::lock_guard<std::mutex> lock(m_impl->statsMutex);
        if (rsl_replica_get_statistics_snapshot(r, &s) != RSL_SUCCESS)
        {
            return;
        }
        pStats->m_cCaptureTimeInMicroseconds = s.capture_micros;
        pStats->m_cDecreesExecuted = s.decrees_executed;
        pStats->m_cLogReads = s.log_reads;
        pStats->m_cLogReadBytes = s.log_read_bytes;
        pStats->m_cLogReadMicroseconds = s.log_read_micros;
        pStats->m_cLogReadMaxMicroseconds = Clamp32(s.log_read_max_micros);
        pStats->m_cLogWrites = s.log_writes;
        pStats->m_cLogWriteBytes = s.log_write_bytes;
        pStats->m_cLogWriteMicroseconds = s.log_write_micros;
        pStats->m_cLogWriteMaxMicroseconds = Clamp32(s.log_write_max_micros);
        pStats->m_cVotingTimeMicroseconds = s.voting_micros;
        pStats->m_cVotingTimeMaxMicroseconds = Clamp32(s.voting_max_micros);
    }

    void RSLStateMachine::SetAcceptMessages(bool acceptMessages)
    {
        if (rsl_replica* r = Handle(m_impl->replica, this))
        {
            rsl_replica_set_accept_messages(r, acceptMessages);
        }
    }

    void RSLStateMachine::Pause()
    {
        if (rsl_replica* r = Handle(m_impl->replica, this))
        {
            rsl_replica_pause(r);
        }
    }

    void RSLStateMachine::Resume()
    {
        if (rsl_replica* r = Handle(m_impl->replica, this))
        {
            rsl_replica_resume(r);
        }
    }

    void RSLStateMachine::UnloadThisOne()
    {
        if (rsl_replica* r = Handle(m_impl->replica, this))
        {
            rsl_replica_unload(r);
        }
    }

    bool RSLStateMachine::ResolveNode(RSLNode* node)
    {
        if (node == nullptr)
        {
            return false;
        }
        if (node->m_ip != 0)
        {
            return true;
        }
        if (node->m_hostName[0] == '\0')
        {
            return false;
        }
        struct addrinfo hints;
        std::memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_INET;
        hints.ai_socktype = SOCK_STREAM;
        struct addrinfo* result = nullptr;
        if (getaddrinfo(node->m_hostName, nullptr, &hints, &result) != 0 || result == nullptr)
        {
            return false;
        }
        bool found = false;
        for (struct addrinfo* a = result; a != nullptr; a = a->ai_next)
        {
            if (a->ai_family == AF_INET && a->ai_addr != nullptr)
            {
                struct sockaddr_in sin;
                std::memcpy(&sin, a->ai_addr, sizeof sin);
                node->m_ip = sin.sin_addr.s_addr;
                found = true;
                break;
            }
        }
        freeaddrinfo(result);
        return found;
    }

    // ------------------------------------------------------------------------------------
    // Trampolines: C callbacks into the virtual methods
    // ------------------------------------------------------------------------------------

    namespace
    {
        RSLResponseCode Code(rsl_status st) { return ToResponse(st, RSLShuttingDown); }
    } // namespace

    RSLStateMachine* RSLStateMachineCallbacks::Machine(void* ctx) noexcept
    {
        RSLStateMachine* sm = static_cast<RSLStateMachine*>(ctx);
        if (sm == nullptr || sm->m_impl->dying.load(std::memory_order_acquire))
        {
            return nullptr;
        }
        return sm;
    }

    rsl_callbacks RSLStateMachineCallbacks::Table(RSLStateMachine* sm) noexcept
    {
        rsl_callbacks cb;
        std::memset(&cb, 0, sizeof cb);
        cb.context = sm;
        cb.load_state = &LoadState;
        cb.execute_replicated_request = &ExecuteReplicatedRequest;
        cb.execute_fast_read_request = &ExecuteFastReadRequest;
        cb.abort_request = &AbortRequest;
        cb.save_state = &SaveState;
        cb.notify_status = &NotifyStatus;
        cb.notify_configuration_changed = &NotifyConfigurationChanged;
        cb.abort_change_configuration = &AbortChangeConfiguration;
        cb.shut_down = &ShutDown;
        cb.before_execute_replicated_requests = &BeforeExecuteReplicatedRequests;
        cb.after_execute_replicated_requests = &AfterExecuteReplicatedRequests;
        cb.try_save_state = &TrySaveState;
        cb.notify_primary_recovered = &NotifyPrimaryRecovered;
        cb.state_saved = &StateSaved;
        cb.state_copied = &StateCopied;
        cb.can_become_primary = &CanBecomePrimary;
        cb.accept_message_from_replica = &AcceptMessageFromReplica;
        cb.resolve_node = &ResolveNode;
        return cb;
    }

    bool RSLStateMachineCallbacks::LoadState(void* ctx, rsl_checkpoint_reader* reader) noexcept
    {
        RSLStateMachine* sm = Machine(ctx);
        if (sm == nullptr)
        {
            return false;
        }
        if (reader == nullptr)
        {
            return sm->LoadState(nullptr);
        }
        RSLCheckpointStreamReader r;
        r.m_reader = reader;
        const bool ok = sm->LoadState(&r);
        r.m_reader = nullptr;
        return ok;
    }

    void RSLStateMachineCallbacks::ExecuteReplicatedRequest(void* ctx, const void* request, size_t len, void* cookie,
                                                            bool* saveState) noexcept
    {
        RSLStateMachine* sm = Machine(ctx);
        if (sm == nullptr)
        {
            return;
        }
        bool save = false;
        sm->ExecuteReplicatedRequest(const_cast<void*>(request), len, cookie, &save);
        if (saveState != nullptr && save)
        {
            *saveState = true;
        }
    }

    void RSLStateMachineCallbacks::ExecuteFastReadRequest(void* ctx, const void* request, size_t len,
                                                          void* cookie) noexcept
    {
        RSLStateMachine* sm = Machine(ctx);
        if (sm == nullptr)
        {
            return;
        }
        sm->ExecuteFastReadRequest(const_cast<void*>(request), len, cookie);
    }

    void RSLStateMachineCallbacks::AbortRequest(void* ctx, rsl_status status, void* cookie) noexcept
    {
        RSLStateMachine* sm = Machine(ctx);
        if (sm == nullptr)
        {
            return;
        }
        sm->AbortRequest(Code(status), cookie);
    }

    void RSLStateMachineCallbacks::SaveState(void* ctx, rsl_checkpoint_writer* writer) noexcept
    {
        RSLStateMachine* sm = Machine(ctx);
        if (sm == nullptr)
        {
            return;
        }
        RSLCheckpointStreamWriter w;
        w.m_writer = writer;
        sm->SaveState(&w);
        w.m_writer = nullptr;
    }

    void RSLStateMachineCallbacks::NotifyStatus(void* ctx, bool isPrimary) noexcept
    {
        RSLStateMachine* sm = Machine(ctx);
        if (sm == nullptr)
        {
            return;
        }
        sm->NotifyStatus(isPrimary);
    }

    void RSLStateMachineCallbacks::NotifyConfigurationChanged(void* ctx, void* cookie) noexcept
    {
        RSLStateMachine* sm = Machine(ctx);
        if (sm == nullptr)
        {
            return;
        }
        sm->NotifyConfigurationChanged(cookie);
    }

    void RSLStateMachineCallbacks::AbortChangeConfiguration(void* ctx, rsl_status status, void* cookie) noexcept
    {
        RSLStateMachine* sm = Machine(ctx);
        if (sm == nullptr)
        {
            return;
        }
        sm->AbortChangeConfiguration(Code(status), cookie);
    }

    void RSLStateMachineCallbacks::ShutDown(void* ctx, rsl_status status) noexcept
    {
        RSLStateMachine* sm = Machine(ctx);
        if (sm == nullptr)
        {
            return;
        }
        sm->ShutDown(Code(status));
        // The original's catch-up (m_catchUpByRestart): after ShutDown the process ends with
        // status 0, as RSL's ExitProcess(0), and its restart loads the copied checkpoint (the
        // journal is closed and the checkpoint in place before ShutDown runs). _Exit, not exit:
        // this is the replica's own execute thread, its other threads still run, and static
        // destructors (a global state machine's would unload this replica and wait for this
        // very thread) must not run under them.
        uint64_t decree = 0;
        rsl_replica* r = Handle(sm->m_impl->replica, sm);
        if (r != nullptr && rsl_replica_restart_to_catch_up(r, &decree))
        {
            SHIM_LOG(CallBackLogLevel_Info, "caught up by copying checkpoint %llu: exiting so that the restart loads it",
                     static_cast<unsigned long long>(decree));
            std::fflush(nullptr);
            std::_Exit(0);
        }
    }

    void RSLStateMachineCallbacks::BeforeExecuteReplicatedRequests(void* ctx) noexcept
    {
        RSLStateMachine* sm = Machine(ctx);
        if (sm == nullptr)
        {
            return;
        }
        sm->BeforeExecuteReplicatedRequests();
    }

    void RSLStateMachineCallbacks::AfterExecuteReplicatedRequests(void* ctx) noexcept
    {
        RSLStateMachine* sm = Machine(ctx);
        if (sm == nullptr)
        {
            return;
        }
        sm->AfterExecuteReplicatedRequests();
    }

    bool RSLStateMachineCallbacks::TrySaveState(void* ctx, rsl_checkpoint_writer* writer) noexcept
    {
        RSLStateMachine* sm = Machine(ctx);
        if (sm == nullptr)
        {
            return false;
        }
        RSLCheckpointStreamWriter w;
        w.m_writer = writer;
        const bool ok = sm->TrySaveState(&w);
        w.m_writer = nullptr;
        return ok;
    }

    void RSLStateMachineCallbacks::NotifyPrimaryRecovered(void* ctx) noexcept
    {
        RSLStateMachine* sm = Machine(ctx);
        if (sm == nullptr)
        {
            return;
        }
        sm->NotifyPrimaryRecovered();
    }

    void RSLStateMachineCallbacks::StateSaved(void* ctx, uint64_t seq, const char* file) noexcept
    {
        RSLStateMachine* sm = Machine(ctx);
        if (sm == nullptr)
        {
            return;
        }
        sm->StateSaved(seq, file);
    }

    void RSLStateMachineCallbacks::StateCopied(void* ctx, uint64_t seq, const char* file, void* cookie) noexcept
    {
        RSLStateMachine* sm = Machine(ctx);
        if (sm == nullptr)
        {
            return;
        }
        sm->StateCopied(seq, file, cookie);
    }

    bool RSLStateMachineCallbacks::CanBecomePrimary(void* ctx, void* cookieBuf, uint32_t* cookieLen) noexcept
    {
        RSLStateMachine* sm = Machine(ctx);
        if (sm == nullptr)
        {
            return false;
        }
        RSLPrimaryCookie cookie;
        const bool ok = sm->CanBecomePrimary(&cookie);
        if (cookieLen != nullptr)
        {
            const std::vector<unsigned char>& data = *cookie.m_data;
            const uint32_t n = cookieBuf == nullptr
                                   ? 0
                                   : static_cast<uint32_t>(std::min<size_t>(data.size(), *cookieLen));
            if (n > 0)
            {
                std::memcpy(cookieBuf, data.data(), n);
            }
            if (n < data.size())
            {
                SHIM_LOG(CallBackLogLevel_Warning, "CanBecomePrimary: the primary cookie was cut to %u bytes", n);
            }
            *cookieLen = n;
        }
        return ok;
    }

    bool RSLStateMachineCallbacks::AcceptMessageFromReplica(void* ctx, const rsl_node* node, const void* data,
                                                            uint32_t len) noexcept
    {
        RSLStateMachine* sm = Machine(ctx);
        if (sm == nullptr)
        {
            return false;
        }
        if (node == nullptr)
        {
            return sm->AcceptMessageFromReplica(nullptr, const_cast<void*>(data), len);
        }
        RSLNode n = shim::FromNode(*node);
        return sm->AcceptMessageFromReplica(&n, const_cast<void*>(data), len);
    }

    bool RSLStateMachineCallbacks::ResolveNode(void* ctx, rsl_node* node) noexcept
    {
        RSLStateMachine* sm = Machine(ctx);
        if (sm == nullptr || node == nullptr)
        {
            return false;
        }
        RSLNode n = shim::FromNode(*node);
        if (!sm->ResolveNode(&n))
        {
            return false;
        }
        *node = shim::ToNode(n);
        return true;
    }


    // ------------------------------------------------------------------------------------
    // RSLUtils
    // ------------------------------------------------------------------------------------

    unsigned long long RSLUtils::CalculateChecksum(const void* blob, const size_t dataSize)
    {
        return rsl_calculate_checksum(static_cast<const uint8_t*>(blob), dataSize);
    }
} // namespace RSLib
