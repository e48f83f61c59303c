// Checks the RSLib C++ API against the original's golden files (docs/spec/formats.md §12, §13):
// RSLUtils::CalculateChecksum, RSLCheckpointUtility::SaveCheckpoint byte for byte, the
// checkpoint reader over a multi-block file, the other checkpoint utilities, and the
// RSLConfigParam defaults.
//
//   golden_check <goldenDir> <scratchDir>
//
// Prints one "ok ..." line per check; exits 1 at the first failure.

#include <arpa/inet.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <sys/stat.h>
#include <vector>

#include "rsl.h"
#include "rsl_ffi.h"
#include "rslutil.h"

using namespace RSLib;

namespace
{
    int g_failures = 0;
    std::string g_lastLog;

    // RSLInit's LogEntryCallback: the message arrives formatted (fmt "%s").
    void CaptureLog(const char* /*file*/, const char* /*function*/, int /*line*/, int /*logId*/,
                    CallBackLogLevel level, const char* /*title*/, const char* fmt, va_list args)
    {
        char buf[1024];
        std::vsnprintf(buf, sizeof buf, fmt, args);
        g_lastLog = std::to_string(static_cast<int>(level)) + " " + fmt + " " + buf;
    }

    void Check(bool ok, const std::string& what)
    {
        std::printf("%s %s\n", ok ? "ok" : "FAILED", what.c_str());
        if (!ok)
        {
            ++g_failures;
        }
    }

    std::vector<unsigned char> ReadFile(const std::string& path)
    {
        std::ifstream in(path, std::ios::binary);
        return std::vector<unsigned char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }

    // The payload of the utility checkpoints in the golden set.
    class HelloCreator : public IRSLCheckpointCreator
    {
    public:
        void SaveState(RSLCheckpointStreamWriter* writer) override
        {
            const char data[] = "hello checkpoint";
            // In two pieces: the writer joins them.
            writer->Write(data, 6);
            writer->Write(data + 6, sizeof data - 1 - 6);
        }
    };

    // Member i+1 of the golden member sets: id "i+1", 127.0.0.(i+1), ports 20000+10i and
    // 20001+10i, host "host(i+1)".
    RSLNodeCollection GoldenMembers(int count)
    {
        RSLNodeCollection nodes;
        for (int i = 0; i < count; ++i)
        {
            RSLNode n;
            n.SetMemberIdAsUInt64(static_cast<unsigned long long>(i + 1));
            char ip[32];
            std::snprintf(ip, sizeof ip, "127.0.0.%d", i + 1);
            n.m_ip = inet_addr(ip);
            n.m_rslPort = static_cast<unsigned short>(20000 + 10 * i);
            n.m_rslLearnPort = static_cast<unsigned short>(20001 + 10 * i);
            std::snprintf(n.m_hostName, sizeof n.m_hostName, "host%d", i + 1);
            nodes.Append(n);
        }
        return nodes;
    }

    void Checksums(const std::string& golden)
    {
        Check(RSLUtils::CalculateChecksum("123456789", 9) == 0x69bc7a5d9767af72ULL, "CalculateChecksum(\"123456789\")");
        Check(RSLUtils::CalculateChecksum("hello", 5) == 0x2E68EB152273854BULL, "CalculateChecksum(\"hello\")");
        Check(RSLUtils::CalculateChecksum("hello checkpoint", 16) == 0x2c9220572d26c787ULL,
              "CalculateChecksum(\"hello checkpoint\")");
        Check(RSLUtils::CalculateChecksum(NULL, 0) == 0xa795d0f29b4dcdf8ULL, "CalculateChecksum(empty)");
        // A message's checksum covers the bytes after its checksum field (docs/spec/formats.md §13.1).
        const std::vector<unsigned char> vote = ReadFile(golden + "/vote_v6.bin");
        unsigned long long stored = 0;
        if (vote.size() == 187)
        {
            std::memcpy(&stored, vote.data() + 6, 8);
        }
        Check(vote.size() == 187 && RSLUtils::CalculateChecksum(vote.data() + 14, vote.size() - 14) == stored &&
                  stored == 0x51ADC2C3A4EC8675ULL,
              "CalculateChecksum(vote_v6.bin[14..]) equals its stored checksum");
        const std::vector<unsigned char> multi = ReadFile(golden + "/cp_multiblock_v4/100.codex");
        unsigned long long tail = 0;
        if (multi.size() == 4195346)
        {
            std::memcpy(&tail, multi.data() + multi.size() - 8, 8);
        }
        Check(multi.size() == 4195346 && tail == 0x38ab5d06357bea40ULL &&
                  RSLUtils::CalculateChecksum(multi.data() + 1024 + 4194304, 10) == tail,
              "CalculateChecksum of the last block of cp_multiblock_v4");
    }

    void SaveCheckpoints(const std::string& golden, const std::string& scratch)
    {
        const RSLProtocolVersion versions[] = {RSLProtocolVersion_2, RSLProtocolVersion_3, RSLProtocolVersion_4,
                                               RSLProtocolVersion_6};
        for (RSLProtocolVersion v : versions)
        {
            const std::string dir = scratch + "/cp_util_v" + std::to_string(static_cast<int>(v));
            mkdir(dir.c_str(), 0755);
            RSLMemberSet members(GoldenMembers(3), NULL, 0);
            HelloCreator creator;
            std::vector<char> dirName(dir.begin(), dir.end());
            dirName.push_back('\0');
            RSLCheckpointUtility::SaveCheckpoint(dirName.data(), v, 4, 1, &members, &creator);
            const std::vector<unsigned char> ours = ReadFile(dir + "/4.codex");
            const std::vector<unsigned char> theirs =
                ReadFile(golden + "/cp_util_v" + std::to_string(static_cast<int>(v)) + "/4.codex");
            Check(!theirs.empty() && ours == theirs,
                  "SaveCheckpoint v" + std::to_string(static_cast<int>(v)) + " matches cp_util_v" +
                      std::to_string(static_cast<int>(v)) + "/4.codex byte for byte (" + std::to_string(ours.size()) +
                      " bytes)");

            char latest[4096];
            const DWORD rc = RSLCheckpointUtility::GetLatestCheckpoint(dir.c_str(), latest, sizeof latest);
            Check(rc == NO_ERROR && std::string(latest) == dir + "/4.codex", "GetLatestCheckpoint " + dir);
            char tiny[4];
            Check(RSLCheckpointUtility::GetLatestCheckpoint(dir.c_str(), tiny, sizeof tiny) == ERROR_INSUFFICIENT_BUFFER,
                  "GetLatestCheckpoint with a small buffer");

            RSLCheckpointStreamReader reader;
            unsigned int ec = reader.Init((dir + "/4.codex").c_str());
            char data[32] = {0};
            unsigned long read = 0;
            ec = ec == NO_ERROR ? reader.GetData(data, sizeof data, &read) : ec;
            Check(ec == NO_ERROR && reader.Size() == 16 && std::string(data, read) == "hello checkpoint",
                  "RSLCheckpointStreamReader reads back v" + std::to_string(static_cast<int>(v)));
            Check(reader.GetData(data, sizeof data, &read) == ERROR_HANDLE_EOF, "ERROR_HANDLE_EOF at the end");
        }
        const std::string empty = scratch + "/empty";
        mkdir(empty.c_str(), 0755);
        char buf[256];
        Check(RSLCheckpointUtility::GetLatestCheckpoint(empty.c_str(), buf, sizeof buf) == ERROR_FILE_NOT_FOUND,
              "GetLatestCheckpoint of an empty directory");
    }

    void ReplicaSets(const std::string& golden, const std::string& scratch)
    {
        RSLMemberSet set;
        Check(RSLCheckpointUtility::GetReplicaSet((golden + "/cp_util_v4/4.codex").c_str(), &set) &&
                  set.GetNumMembers() == 3 && std::strcmp(set.GetMemberInfo(2)->m_memberIdString, "3") == 0 &&
                  set.GetMemberInfo(1)->m_rslPort == 20010 && set.GetMemberInfo(1)->m_rslLearnPort == 20011 &&
                  std::strcmp(set.GetMemberInfo(0)->m_hostName, "host1") == 0 && set.IncludesMember("2") &&
                  !set.IncludesMember("4"),
              "GetReplicaSet(cp_util_v4)");

        // Rewrite a copy's member set, then read it back.
        const std::vector<unsigned char> bytes = ReadFile(golden + "/cp_util_v6/4.codex");
        const std::string copy = scratch + "/changed.codex";
        std::ofstream(copy, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()),
                                                    static_cast<std::streamsize>(bytes.size()));
        RSLNodeCollection two = GoldenMembers(2);
        char cookie[] = "cfg";
        RSLMemberSet next(two, cookie, 3);
        RSLMemberSet back;
        unsigned int len = 0;
        bool ok = RSLCheckpointUtility::ChangeReplicaSet(copy.c_str(), &next) &&
                  RSLCheckpointUtility::GetReplicaSet(copy.c_str(), &back);
        const char* backCookie = static_cast<const char*>(back.GetConfigurationCookie(&len));
        Check(ok && back.GetNumMembers() == 2 && len == 3 && std::memcmp(backCookie, "cfg", 3) == 0,
              "ChangeReplicaSet then GetReplicaSet");
        RSLCheckpointStreamReader reader;
        char data[32] = {0};
        unsigned long read = 0;
        ok = reader.Init(copy.c_str()) == NO_ERROR && reader.GetData(data, sizeof data, &read) == NO_ERROR;
        Check(ok && std::string(data, read) == "hello checkpoint", "the rewritten checkpoint keeps its data");
    }

    void MultiBlock(const std::string& golden)
    {
        const std::string file = golden + "/cp_multiblock_v4/100.codex";
        RSLCheckpointStreamReader reader;
        Check(reader.Init(file.c_str()) == NO_ERROR && reader.Size() == 4194306 &&
                  std::string(reader.GetFileName()) == file,
              "Init, Size and GetFileName of cp_multiblock_v4");
        // GetDataPointer stops at the 4 MB block boundary: callers loop.
        unsigned long long at = 0;
        bool same = true, shortRead = false;
        for (;;)
        {
            void* p = NULL;
            unsigned long read = 0;
            const unsigned int ec = reader.GetDataPointer(&p, 3 * 1000 * 1000, &read);
            if (ec == ERROR_HANDLE_EOF)
            {
                break;
            }
            if (ec != NO_ERROR)
            {
                same = false;
                break;
            }
            shortRead = shortRead || (read < 3 * 1000 * 1000 && at + read < 4194306);
            const unsigned char* bytes = static_cast<const unsigned char*>(p);
            for (unsigned long i = 0; i < read; ++i, ++at)
            {
                same = same && bytes[i] == static_cast<unsigned char>((7 * at + (at >> 8)) % 256);
            }
        }
        Check(same && at == 4194306, "GetDataPointer reads every byte of the two blocks");
        Check(shortRead, "GetDataPointer returns a short read at the block boundary");

        // Seek and Skip, then a read through the DWORD overload.
        unsigned char b[4];
        DWORD read = 0;
        const unsigned long long target = 4194296 - 2;
        bool ok = reader.Seek(target) == NO_ERROR && reader.GetData(b, 4, &read) == NO_ERROR;
        bool match = ok && read > 0;
        for (DWORD i = 0; i < read; ++i)
        {
            const unsigned long long pos = target + i;
            match = match && b[i] == static_cast<unsigned char>((7 * pos + (pos >> 8)) % 256);
        }
        Check(match, "Seek across the block boundary");
        ok = reader.Seek(0) == NO_ERROR && reader.Skip(4194300) == NO_ERROR && reader.GetData(b, 1, &read) == NO_ERROR;
        Check(ok && read == 1 && b[0] == static_cast<unsigned char>((7ULL * 4194300 + (4194300 >> 8)) % 256),
              "Skip past the block boundary");
    }

    void ConfigDefaults()
    {
        RSLConfigParam p;
        rsl_config c;
        rsl_config_init(&c);
        const bool same =
            p.m_newLeaderGracePeriodSec == c.new_leader_grace_period_sec &&
            p.m_heartBeatIntervalSec == c.heart_beat_interval_sec && p.m_electionDelaySec == c.election_delay_sec &&
            p.m_maxElectionRandomizeSec == c.max_election_randomize_sec &&
            p.m_initializeRetryIntervalSec == c.initialize_retry_interval_sec &&
            p.m_prepareRetryIntervalSec == c.prepare_retry_interval_sec &&
            p.m_voteRetryIntervalSec == c.vote_retry_interval_sec &&
            p.m_voteMaxOutstandingIntervalSec == c.vote_max_outstanding_interval_sec &&
            p.m_cPQueryRetryIntervalSec == c.c_p_query_retry_interval_sec &&
            static_cast<unsigned long long>(p.m_maxCheckpointIntervalSec) == c.max_checkpoint_interval_sec &&
            p.m_joinMessagesIntervalSec == c.join_messages_interval_sec && p.m_maxLogLenMB == c.max_log_len_mb &&
            p.m_sendTimeoutSec == c.send_timeout_sec && p.m_receiveTimeoutSec == c.receive_timeout_sec &&
            p.m_maxCacheLengthMB == c.max_cache_length_mb && p.m_maxVotesInLog == c.max_votes_in_log &&
            p.m_maxOutstandingPerReplica == c.max_outstanding_per_replica &&
            p.m_maxCheckpoints == c.max_checkpoints && p.m_maxCheckpointSizeGB == c.max_checkpoint_size_gb &&
            p.m_minCheckpointSpaceFileCount == c.min_checkpoint_space_file_count && p.m_maxLogs == c.max_logs &&
            p.m_logLenRandomize == c.log_len_randomize && p.m_electionRandomize == c.election_randomize &&
            p.m_fastReadSeqThreshold == c.fast_read_seq_threshold &&
            p.m_inMemoryExecutionQueueSizeMB == c.in_memory_execution_queue_size_mb &&
            p.m_numReaderThreads == c.num_reader_threads && p.m_maxMessageSizeMB == c.max_message_size_mb &&
            p.m_maxMessageAlertSizeMB == c.max_message_alert_size_mb &&
            p.m_allowPrimaryPromotionWhileCatchingUp == c.allow_primary_promotion_while_catching_up &&
            p.m_workingDir[0] == '\0' && c.working_dir[0] == '\0' &&
            p.m_addMemberIdToWorkingDir == c.add_member_id_to_working_dir && p.m_cancelDiskIo == c.cancel_disk_io &&
            p.m_useGlobalAcceptMessagesFlag == c.use_global_accept_messages_flag &&
            p.m_pipelineWindow == c.pipeline_window && p.m_syncWrites == c.sync_writes;
        Check(same, "RSLConfigParam() defaults equal rsl_config_init");
        Check(p.m_newLeaderGracePeriodSec == 15 && p.m_heartBeatIntervalSec == 2 && p.m_electionDelaySec == 10 &&
                  p.m_voteMaxOutstandingIntervalSec == 480 && p.m_maxLogLenMB == 100 && p.m_maxCacheLengthMB == 50 &&
                  p.m_maxVotesInLog == 10000 && p.m_maxCheckpoints == 4 && p.m_maxLogs == 10 &&
                  p.m_maxMessageSizeMB == 100 && p.m_addMemberIdToWorkingDir && p.m_cancelDiskIo &&
                  sizeof p.m_workingDir == MAX_PATH + 1,
              "RSLConfigParam() has RSL's defaults");
    }

    void ValueClasses()
    {
        RSLNode n;
        n.SetMemberIdAsUInt64(18446744073709551615ULL);
        Check(n.GetMemberIdAsUInt64() == 18446744073709551615ULL && RSLNode::ParseMemberIdAsUInt64("") == 0 &&
                  RSLNode::ParseMemberIdAsUInt64("42") == 42,
              "RSLNode member ids as numbers");
        RSLNodeCollection c = GoldenMembers(3);
        RSLNodeCollection d(c);
        d.Remove(0);
        c = c; // self-assignment keeps the nodes
        d = c;
        Check(c.Count() == 3 && d.Count() == 3 && std::strcmp(d[2].m_memberIdString, "3") == 0, "RSLNodeCollection");
        RSLMemberSet s(c, NULL, 0);
        const RSLNodeArray* array = s.GetMemberArray();
        RSLMemberSet fromArray(*array, const_cast<char*>("x"), 1);
        unsigned int len = 0;
        Check(fromArray.GetNumMembers() == 3 && fromArray.GetConfigurationCookie(&len) != NULL && len == 1 &&
                  s.GetConfigurationCookie(&len) == NULL && len == 0 && s.GetMemberInfo(3) == NULL,
              "RSLMemberSet");
        RSLStats stats;
        stats.m_cbSizeOfThisStruct = sizeof stats;
        ReplicaHealth health;
        Check(RSLStateMachine::GetHighResolutionCurrentTickCount() > 0 && health.m_memberId[0] == '\0',
              "RSLStats, ReplicaHealth, GetHighResolutionCurrentTickCount");
    }
} // namespace

int main(int argc, char** argv)
{
    if (argc != 3)
    {
        std::fprintf(stderr, "usage: golden_check <goldenDir> <scratchDir>\n");
        return 2;
    }
    const std::string golden = argv[1];
    const std::string scratch = argv[2];
    if (!RSLInit(NULL, false, NULL, CaptureLog))
    {
        return 1;
    }
    // A thumbprint that is not hex is refused and logged, the text quoted as given.
    const bool refused = !SetThumbprintsForSsl("%s%n", NULL, true, true);
    Check(refused && g_lastLog.find("4 %s ") == 0 && g_lastLog.find("SetThumbprintsForSsl: thumbprint A: ") != std::string::npos &&
              g_lastLog.find("\"%s%n\" is not 40 hex digits") != std::string::npos,
          "LogEntryCallback gets the formatted message with fmt \"%s\": " + g_lastLog);
    Checksums(golden);
    SaveCheckpoints(golden, scratch);
    ReplicaSets(golden, scratch);
    MultiBlock(golden);
    ConfigDefaults();
    ValueClasses();
    RSLUnload();
    std::printf("%d failures\n", g_failures);
    return g_failures == 0 ? 0 : 1;
}
