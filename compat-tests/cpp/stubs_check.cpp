// The RSLib calls that once were stubs, each checked for the original's behaviour through
// include/rsl.h. compat-tests/tests/cpp_cluster.rs builds it like kv_service and runs
//
//   stubs_check <basePort> <workDir>
//
// on ports basePort, +10, +20 (and each +1) of 127.0.0.1, in one process:
//   1. three replicas with an election delay of an hour: ChangeElectionDelay(3) on the two
//      secondaries, then the primary pauses, and a secondary is elected within the minute;
//      resumed, the old primary steps down and executes what the new one proposes;
//      IsInStableState is true on each replica of the formed ring;
//   2. one replica restarted alone knows the primary from its log yet is not stable;
//   3. Replay(dir, max, cpSeq, cpDir) writes a checkpoint that a plain Replay loads, and
//      refuses bad argument pairs;
//   4. CreateWriterForThisReader / CloseWriterForThisReader rewrite a checkpoint's payload;
//      the writer's public Init and Close, the reader's Init with a header;
//   5. Bootstrap with a member that never answers returns RSLBootstrapFailed at its timeout;
//   6. MigrateToVersion3/4 raise a v2 checkpoint's version and give it a member set;
//   7. the NotificationsCallback hears a failed Initialize (RSL's title, the cause as its
//      message), not a logged error;
//   8. the LogEntryCallback gets each entry's file, function, line and log id;
//   and AcceptMessageFromReplica gets the sender's address and port with its id (step 1).
// Prints "ok <step>" per step; exits 1 at the first failure.

#include <arpa/inet.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "check_support.h"
#include "rsl.h"
#include "rslutil.h"

using namespace RSLib;

namespace
{
    RSLConfigParam Config(const std::string& dir, unsigned int electionDelaySec)
    {
        RSLConfigParam cfg = RingConfig(dir, 1, electionDelaySec);
        cfg.m_prepareRetryIntervalSec = 1;
        cfg.m_voteRetryIntervalSec = 1;
        return cfg;
    }

    std::string ReadAll(RSLCheckpointStreamReader* reader)
    {
        std::string data(static_cast<size_t>(reader->Size()), '\0');
        size_t at = 0;
        while (at < data.size())
        {
            unsigned int read = 0;
            if (reader->GetData(&data[at], static_cast<unsigned long>(data.size() - at), &read) != NO_ERROR || read == 0)
            {
                Fail("reading a checkpoint");
            }
            at += read;
        }
        return data;
    }

    // The state: every executed request, in order.
    class Machine : public CheckMachine
    {
    public:
        bool LoadState(RSLCheckpointStreamReader* reader) override
        {
            std::lock_guard<std::mutex> lock(m_mutex);
            m_state = reader == nullptr ? std::string() : ReadAll(reader);
            return true;
        }

        // "b" asks for a checkpoint: a replay then knows the member set from it.
        void ExecuteReplicatedRequest(void* request, size_t len, void* /*cookie*/, bool* saveState) override
        {
            std::lock_guard<std::mutex> lock(m_mutex);
            const std::string r(static_cast<const char*>(request), len);
            m_state.append(r).push_back(';');
            *saveState = r == "b";
            ++m_executed;
        }

        void SaveState(RSLCheckpointStreamWriter* writer) override
        {
            std::lock_guard<std::mutex> lock(m_mutex);
            writer->Write(m_state.data(), static_cast<unsigned long>(m_state.size()));
        }

        // Counts senders named in full: id, address and port, as the configuration has them.
        bool AcceptMessageFromReplica(RSLNode* node, void* /*data*/, unsigned int /*len*/) override
        {
            if (node != nullptr && node->m_memberIdString[0] != '\0' && node->m_ip == inet_addr("127.0.0.1") &&
                node->m_rslPort == MakeNode(std::atoi(node->m_memberIdString)).m_rslPort)
            {
                ++m_fullSenders;
            }
            return true;
        }

        std::string State()
        {
            std::lock_guard<std::mutex> lock(m_mutex);
            return m_state;
        }

        std::atomic<int> m_executed{0};
        std::atomic<int> m_fullSenders{0};

    private:
        std::mutex m_mutex;
        std::string m_state;
    };

    bool StartLegacy(Machine* m, int id, const std::string& dir, unsigned int electionDelaySec)
    {
        RSLConfigParam cfg = Config(dir, electionDelaySec);
        RSLNodeCollection nodes = RingNodes();
        return m->Initialize(&cfg, nodes, MakeNode(id), RSLProtocolVersion_6, false);
    }

    // 1 and 2. Returns the data directory of a replica that executed everything.
    std::string ElectionDelayAndStableState()
    {
        const std::string dir = g_work + "/ring";
        std::vector<std::unique_ptr<Machine>> ring;
        for (int id = 1; id <= 3; ++id)
        {
            ring.emplace_back(new Machine());
            Check(StartLegacy(ring.back().get(), id, dir, 3600), "Initialize " + std::to_string(id));
        }
        std::vector<Machine*> all{ring[0].get(), ring[1].get(), ring[2].get()};
        // The first election: the delay is an hour, so replica 1 is asked to stand.
        int p = -1;
        Check(WaitFor(60, [&] {
                  for (int i = 0; i < 3; ++i)
                  {
                      if (all[i]->m_primary.load())
                      {
                          p = i;
                      }
                  }
                  if (p < 0)
                  {
                      all[0]->AttemptPromotion();
                  }
                  return p >= 0;
              }),
              "a first primary");
        SubmitAndWait(all[p], "a", all, 1);
        Check(WaitFor(60, [&] { return all[0]->IsInStableState() && all[1]->IsInStableState() && all[2]->IsInStableState(); }),
              "IsInStableState on every replica of the ring");
        std::cout << "ok IsInStableState (stable ring)" << std::endl;
        Check(all[0]->m_fullSenders.load() + all[1]->m_fullSenders.load() + all[2]->m_fullSenders.load() > 0,
              "AcceptMessageFromReplica gets the sender's full RSLNode");
        std::cout << "ok AcceptMessageFromReplica" << std::endl;

        std::vector<int> rest; // indices of the secondaries
        for (int i = 0; i < 3; ++i)
        {
            if (i != p)
            {
                rest.push_back(i);
                all[i]->ChangeElectionDelay(3);
            }
        }
        // A vote after the change: each secondary sets its next timer with the new delay.
        SubmitAndWait(all[p], "b", all, 2);
        // The paused primary sends no heartbeat: the others elect one of them.
        all[p]->Pause();
        Check(WaitFor(60, [&] { return all[rest[0]]->m_primary.load() || all[rest[1]]->m_primary.load(); }),
              "a new primary within a minute after ChangeElectionDelay(3) and Pause");
        const int next = all[rest[0]]->m_primary.load() ? rest[0] : rest[1];
        const int survivor = next == rest[0] ? rest[1] : rest[0];
        std::cout << "ok ChangeElectionDelay" << std::endl;
        all[p]->Resume();
        Check(WaitFor(60, [&] { return !all[p]->m_primary.load(); }), "the resumed primary steps down");
        SubmitAndWait(all[next], "c", all, 3);
        // Known chosen in the logs only once a later decree is: "d" makes "c" replayable.
        SubmitAndWait(all[next], "d", all, 4);
        std::cout << "ok Pause/Resume" << std::endl;
        all[p]->UnloadThisOne();

        // 2: a replica alone knows the primary from its log but is not stable.
        for (int i : rest)
        {
            all[i]->UnloadThisOne();
        }
        ring.clear();
        std::unique_ptr<Machine> alone(new Machine());
        Check(StartLegacy(alone.get(), survivor + 1, dir, 3600), "restart alone");
        Check(WaitFor(30, [&] {
                  RSLNode node;
                  alone->GetCurrentPrimary(&node);
                  return node.m_memberIdString[0] != '\0';
              }),
              "the restarted replica knows the last primary");
        Check(!alone->IsInStableState(), "IsInStableState is false while the replica cannot reach a quorum");
        alone->UnloadThisOne();
        std::cout << "ok IsInStableState (alone)" << std::endl;
        return dir + "/" + std::to_string(survivor + 1);
    }

    // 3. Returns the checkpoint written.
    std::string ReplayToCheckpoint(const std::string& dataDir)
    {
        const std::string cpDir = g_work + "/cp";
        mkdir(cpDir.c_str(), 0755);
        Machine bad;
        Check(!bad.Replay(dataDir.c_str(), ULLONG_MAX - 1, 5, nullptr), "Replay refuses a sequence number without a directory");
        Machine same;
        Check(!same.Replay(dataDir.c_str(), ULLONG_MAX - 1, 5, dataDir.c_str()), "Replay refuses the data directory as the output");
        Machine nothing;
        Check(nothing.Replay(dataDir.c_str(), 0, 5, cpDir.c_str()), "Replay to decree 0 succeeds with nothing to do");

        Machine source;
        Check(source.Replay(dataDir.c_str(), ULLONG_MAX - 1, 1000, cpDir.c_str()), "Replay with a checkpoint directory");
        Check(source.State().compare(0, 6, "a;b;c;") == 0, "the replayed state: " + source.State());
        char latest[4096];
        Check(RSLCheckpointUtility::GetLatestCheckpoint(cpDir.c_str(), latest, sizeof latest) == NO_ERROR, "a checkpoint in cpDir");
        const std::string file = cpDir + "/1000.codex";
        Check(file == latest, std::string("the checkpoint is 1000.codex: ") + latest);
        RSLMemberSet set;
        Check(RSLCheckpointUtility::GetReplicaSet(file.c_str(), &set) && set.GetNumMembers() == 3, "its member set");

        Machine reloaded;
        Check(reloaded.Replay(cpDir.c_str(), ULLONG_MAX - 1), "Replay of the new checkpoint");
        Check(reloaded.State() == source.State(), "the new checkpoint holds the state: " + reloaded.State());
        Check(reloaded.GetCurrentSequenceNumber() == 1000, "labelled 1000");
        std::cout << "ok Replay to a checkpoint" << std::endl;
        return file;
    }

    // 4.
    void RewriteCheckpoint(const std::string& file)
    {
        const std::string outDir = g_work + "/rewritten";
        mkdir(outDir.c_str(), 0755);
        const std::string out = outDir + "/1000.codex";

        RSLCheckpointStreamWriter unopened;
        Check(unopened.Close() == ERROR_INVALID_PARAMETER, "Close of a writer never opened");
        Check(unopened.Init(out.c_str(), nullptr) == ERROR_INVALID_PARAMETER, "Writer::Init without a header");
        RSLCheckpointStreamReader noHeader;
        Check(noHeader.Init(file.c_str(), nullptr) == ERROR_INVALID_PARAMETER, "Reader::Init without a header");

        RSLCheckpointStreamReader reader;
        Check(reader.Init(file.c_str()) == NO_ERROR, "Reader::Init");
        Check(ReadAll(&reader).compare(0, 6, "a;b;c;") == 0, "the original payload");
        Check(reader.CreateWriterForThisReader(file.c_str()) == nullptr, "no writer over an existing file");
        RSLCheckpointStreamWriter* writer = reader.CreateWriterForThisReader(out.c_str());
        Check(writer != nullptr, "CreateWriterForThisReader");
        const std::string payload(5 * 1024 * 1024, 'x'); // past one 4 MB block
        Check(writer->Write(payload.data(), static_cast<unsigned long>(payload.size())) == NO_ERROR, "Write");
        reader.CloseWriterForThisReader(out.c_str(), writer);
        Check(writer->Close() == ERROR_INVALID_PARAMETER, "a closed writer closes once");
        delete writer;

        RSLCheckpointStreamReader again;
        Check(again.Init(out.c_str()) == NO_ERROR, "the rewritten checkpoint opens");
        Check(ReadAll(&again) == payload, "the rewritten payload");
        RSLMemberSet before, after;
        Check(RSLCheckpointUtility::GetReplicaSet(file.c_str(), &before) &&
                  RSLCheckpointUtility::GetReplicaSet(out.c_str(), &after) &&
                  after.GetNumMembers() == before.GetNumMembers(),
              "the rewritten checkpoint keeps the header's member set");
        Machine loaded;
        Check(loaded.Replay(outDir.c_str(), ULLONG_MAX - 1) && loaded.State() == payload &&
                  loaded.GetCurrentSequenceNumber() == 1000,
              "a replay loads the rewritten checkpoint");
        std::cout << "ok CreateWriterForThisReader" << std::endl;
    }

    struct Payload : IRSLCheckpointCreator
    {
        void SaveState(RSLCheckpointStreamWriter* writer) override { writer->Write("migrated", 8); }
    };

    std::string PayloadOf(const std::string& file)
    {
        RSLCheckpointStreamReader reader;
        Check(reader.Init(file.c_str()) == NO_ERROR, "open " + file);
        return ReadAll(&reader);
    }

    // 6.
    void Migrate()
    {
        const std::string dir = g_work + "/migrate";
        mkdir(dir.c_str(), 0755);
        Payload creator;
        std::string dirBuf = dir;
        RSLCheckpointUtility::SaveCheckpoint(&dirBuf[0], RSLProtocolVersion_2, 7, 1, nullptr, &creator);
        const std::string file = dir + "/7.codex";
        RSLMemberSet numeric;
        Check(!RSLCheckpointUtility::GetReplicaSet(file.c_str(), &numeric), "a v2 checkpoint has no member set");

        RSLNodeCollection named;
        RSLNode node;
        std::snprintf(node.m_memberIdString, sizeof node.m_memberIdString, "alpha");
        node.m_ip = inet_addr("127.0.0.1");
        node.m_rslPort = 4000;
        named.Append(node);
        RSLMemberSet strings(named, nullptr, 0);
        Check(!RSLCheckpointUtility::MigrateToVersion3(file.c_str(), &strings), "v3 refuses a non-numeric id");

        RSLNodeCollection nodes = RingNodes();
        RSLMemberSet three(nodes, nullptr, 0);
        Check(RSLCheckpointUtility::MigrateToVersion3(file.c_str(), &three), "MigrateToVersion3");
        Check(RSLCheckpointUtility::GetReplicaSet(file.c_str(), &numeric) && numeric.GetNumMembers() == 3,
              "the v3 checkpoint's member set");
        Check(PayloadOf(file) == "migrated", "v3 keeps the data");

        Check(RSLCheckpointUtility::MigrateToVersion4(file.c_str(), &strings), "MigrateToVersion4 with a string id");
        RSLMemberSet after;
        Check(RSLCheckpointUtility::GetReplicaSet(file.c_str(), &after) && after.GetNumMembers() == 1 &&
                  std::strcmp(after.GetMemberInfo(0)->m_memberIdString, "alpha") == 0,
              "the v4 checkpoint's member set");
        Check(PayloadOf(file) == "migrated", "v4 keeps the data");
        Check(!RSLCheckpointUtility::MigrateToVersion3(file.c_str(), &three), "no migration down to v3");
        std::cout << "ok MigrateToVersion3/4" << std::endl;
    }

    std::atomic<int> g_notifications{0};
    std::string g_notificationTitle;
    std::string g_notificationMessage;

    void OnNotification(int level, int /*logId*/, const char* title, const char* message)
    {
        if (level == CallBackLogLevel_Error && title != nullptr)
        {
            g_notificationTitle = title;
            g_notificationMessage = message != nullptr ? message : "";
        }
        ++g_notifications;
    }

    // 7.
    void Notifications()
    {
        Check(RSLInit(nullptr, false, OnNotification, nullptr), "RSLInit with a NotificationsCallback");
        Machine missing;
        Check(!missing.Replay((g_work + "/no-such-dir").c_str(), 10), "Replay of a missing directory fails (logged)");
        Check(g_notifications.load() == 0, "a logged error is no notification");
        Machine unconfigured;
        RSLConfigParam cfg = Config("", 2); // no working directory
        Check(!unconfigured.Initialize(&cfg, MakeNode(1), RSLProtocolVersion_6, false), "Initialize without a directory fails");
        Check(g_notifications.load() == 1 && g_notificationTitle == "Could not load config",
              "a failed Initialize is notified: " + g_notificationTitle);
        // RSL's message is NULL; here it names the cause.
        Check(g_notificationMessage.find("m_workingDir") != std::string::npos,
              "the notification's message names the cause: " + g_notificationMessage);
        Check(RSLInit(nullptr, false), "RSLInit again, without callbacks");
        std::cout << "ok NotificationsCallback" << std::endl;
    }

    struct Entry
    {
        std::string file, function, title, message;
        int line, logId;
        CallBackLogLevel level;
    };
    std::mutex g_entriesMutex;
    std::vector<Entry> g_entries;

    void OnLogEntry(const char* file, const char* function, int line, int logId, CallBackLogLevel level,
                    const char* title, const char* fmt, va_list args)
    {
        char buf[2048];
        std::vsnprintf(buf, sizeof buf, fmt, args);
        std::lock_guard<std::mutex> lock(g_entriesMutex);
        g_entries.push_back(Entry{file, function, title, buf, line, logId, level});
    }

    // 8.
    void LogEntries()
    {
        Check(RSLInit(nullptr, false, nullptr, OnLogEntry), "RSLInit with a LogEntryCallback");
        Machine missing;
        Check(!missing.Replay((g_work + "/no-such-dir").c_str(), 10), "Replay of a missing directory fails (logged)");
        Check(RSLInit(nullptr, false), "RSLInit again, without callbacks");
        std::lock_guard<std::mutex> lock(g_entriesMutex);
        bool shim = false, engine = false;
        for (const Entry& e : g_entries)
        {
            const bool sited = e.line > 0 && e.logId == 3 && !e.title.empty() && e.level == CallBackLogLevel_Error;
            shim |= sited && e.file.find("rsl.cpp") != std::string::npos && e.function == "Replay" &&
                    e.message.find("Replay of") != std::string::npos;
            engine |= sited && e.file.find(".rs") != std::string::npos && e.function.find("rsl_ffi") == 0;
        }
        Check(shim, "the shim's entry names rsl.cpp, Replay, its line and LogID_RSLLIB");
        Check(engine, "the engine's entry names its source file, module and line");
        std::cout << "ok LogEntryCallback" << std::endl;
    }

    // 5.
    void BootstrapTimeout()
    {
        Machine m;
        RSLConfigParam cfg = Config(g_work + "/boot", 2);
        Check(m.Initialize(&cfg, MakeNode(1), RSLProtocolVersion_6, false), "Initialize (v4 form)");
        RSLNodeCollection nodes;
        nodes.Append(MakeNode(1));
        nodes.Append(MakeNode(2)); // never started
        RSLMemberSet set(nodes, nullptr, 0);
        const auto start = std::chrono::steady_clock::now();
        const RSLResponseCode rc = m.Bootstrap(&set, 2);
        const auto waited = std::chrono::steady_clock::now() - start;
        Check(rc == RSLBootstrapFailed, "Bootstrap without a quorum returns RSLBootstrapFailed, got " + std::to_string(rc));
        Check(waited >= std::chrono::seconds(2), "Bootstrap waited for its timeout");
        Check(!m.IsInStableState(), "not stable without a quorum");
        m.UnloadThisOne();
        std::cout << "ok Bootstrap timeout" << std::endl;
    }
} // namespace

int main(int argc, char** argv)
{
    if (!ReadArgs(argc, argv, "stubs_check"))
    {
        return 2;
    }
    if (!RSLInit(nullptr, false))
    {
        Fail("RSLInit");
    }
    const std::string dataDir = ElectionDelayAndStableState();
    const std::string file = ReplayToCheckpoint(dataDir);
    RewriteCheckpoint(file);
    BootstrapTimeout();
    Migrate();
    Notifications();
    LogEntries();
    std::cout << "all ok" << std::endl;
    return 0;
}
