// RSLConfigParam fields whose effect a service sees through include/rsl.h, each checked with
// the field at its default and changed. compat-tests/tests/cpp_cluster.rs builds it like
// stubs_check and runs
//
//   fields_check <basePort> <workDir>
//
// with three replicas on ports basePort, +10, +20 (and each +1) of 127.0.0.1, in one process:
//   1. with the defaults, a 2 MiB request and a checkpoint raise no Alert;
//   2. the same ring restarted with m_maxMessageAlertSizeMB = 1 and
//      m_minCheckpointSpaceFileCount = INT_MAX (no disk has that much room): the 2 MiB
//      request's vote raises a CallBackLogLevel_Alert entry at the secondaries, the checkpoint
//      another;
//   3. restarted with m_nvmJournalPath = "journal.nvm" and m_nvmJournalSizeMB = 1: each
//      replica's persistent log is created in its data directory at that size, and a request
//      replicates through it (with m_syncWrites = false, Initialize refuses it);
//   4. restarted with m_voteMaxOutstandingIntervalSec = 10, the primary whose secondaries are gone fails
//      (RSL's deadlock breaker; the original ends the process): ShutDown runs, an Error entry
//      gives the reason, and UnloadThisOne still works.
// Prints "ok <step>" per step; exits 1 at the first failure.

#include <atomic>
#include <climits>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <sys/stat.h>

#include "check_support.h"
#include "rsl.h"

using namespace RSLib;

namespace
{
    // The log entries at Alert, and the Error entries' messages.
    std::mutex g_logMutex;
    std::vector<std::string> g_alerts;
    std::vector<std::string> g_errors;

    void OnLogEntry(const char* /*file*/, const char* /*function*/, int /*line*/, int /*logId*/, CallBackLogLevel level,
                    const char* title, const char* fmt, va_list args)
    {
        char buf[2048];
        std::vsnprintf(buf, sizeof buf, fmt, args);
        std::lock_guard<std::mutex> lock(g_logMutex);
        if (level == CallBackLogLevel_Alert)
        {
            g_alerts.push_back(title);
        }
        else if (level == CallBackLogLevel_Error)
        {
            g_errors.push_back(buf);
        }
    }

    // How many Alert entries (or Error entries) contain `text`.
    size_t Count(const std::vector<std::string>& entries, const std::string& text)
    {
        std::lock_guard<std::mutex> lock(g_logMutex);
        size_t n = 0;
        for (const std::string& e : entries)
        {
            n += e.find(text) != std::string::npos;
        }
        return n;
    }

    size_t AlertCount()
    {
        std::lock_guard<std::mutex> lock(g_logMutex);
        return g_alerts.size();
    }

    // Counts executed requests; "save" asks for a checkpoint.
    class Machine : public CheckMachine
    {
    public:
        void ExecuteReplicatedRequest(void* request, size_t len, void* /*cookie*/, bool* saveState) override
        {
            *saveState = std::string(static_cast<const char*>(request), len) == "save";
            ++m_executed;
        }

        void SaveState(RSLCheckpointStreamWriter* writer) override
        {
            writer->Write("state", 5);
            ++m_saved;
        }

        void ShutDown(RSLResponseCode) override { m_shutDown = true; }

        std::atomic<int> m_executed{0};
        std::atomic<int> m_saved{0};
        std::atomic<bool> m_shutDown{false};
    };

    using Ring = std::vector<std::unique_ptr<Machine>>;

    // Starts the ring in `g_work`/ring with `tune` applied to each replica's configuration;
    // returns it once it has a primary.
    Ring Start(const std::function<void(RSLConfigParam&)>& tune)
    {
        Ring ring;
        RSLNodeCollection nodes = RingNodes();
        for (int id = 1; id <= 3; ++id)
        {
            RSLConfigParam cfg = RingConfig(g_work + "/ring", 1, 5);
            cfg.m_prepareRetryIntervalSec = 1;
            cfg.m_voteRetryIntervalSec = 1;
            // Nothing here is about durability: a disk shared with busier tests must not
            // hold up every vote behind its fsync.
            cfg.m_syncWrites = false;
            tune(cfg);
            ring.emplace_back(new Machine());
            Check(ring.back()->Initialize(&cfg, nodes, MakeNode(id), RSLProtocolVersion_6, false), "Initialize " + std::to_string(id));
        }
        Check(WaitFor(60, [&] { return PrimaryIndex(ring) >= 0; }), "a primary");
        return ring;
    }

    // Replicates `request` at whichever replica is primary and waits until every replica has
    // executed it. On a loaded machine an election may abort it: it is then submitted again
    // (executing it twice does not matter here).
    void Submit(Ring& ring, std::string request)
    {
        std::vector<int> before;
        for (auto& m : ring)
        {
            before.push_back(m->m_executed.load());
        }
        const auto executed = [&] {
            for (size_t i = 0; i < ring.size(); ++i)
            {
                if (ring[i]->m_executed.load() <= before[i])
                {
                    return false;
                }
            }
            return true;
        };
        // Generous: the machines that run this are shared and may be loaded.
        Check(WaitFor(180, [&] {
                  const int p = PrimaryIndex(ring);
                  return p >= 0 && ring[p]->ReplicateRequest(&request[0], request.size(), nullptr) == RSLSuccess &&
                         WaitFor(20, executed);
              }),
              "every replica executes a request of " + std::to_string(request.size()) + " bytes");
    }

    // A large request, then a checkpoint on every replica.
    void BigRequestAndCheckpoint(Ring& ring)
    {
        std::vector<int> saved;
        for (auto& m : ring)
        {
            saved.push_back(m->m_saved.load());
        }
        Submit(ring, std::string(2 << 20, 'x'));
        Submit(ring, "save");
        Check(WaitFor(60,
                      [&] {
                          for (size_t i = 0; i < ring.size(); ++i)
                          {
                              if (ring[i]->m_saved.load() <= saved[i])
                              {
                                  return false;
                              }
                          }
                          return true;
                      }),
              "every replica saves a checkpoint");
    }

    const char* const kPacketAlert = "packet larger than the maximum message alert size";
    const char* const kSpaceAlert = "free space left for writing checkpoints is too small";

    // 1.
    void NoAlertsByDefault()
    {
        Ring ring = Start([](RSLConfigParam&) {});
        BigRequestAndCheckpoint(ring);
        UnloadAll(ring);
        Check(AlertCount() == 0, "no Alert with the default configuration");
        std::cout << "ok no Alert by default" << std::endl;
    }

    // 2.
    void Alerts()
    {
        Ring ring = Start([](RSLConfigParam& cfg) {
            cfg.m_maxMessageAlertSizeMB = 1;
            cfg.m_minCheckpointSpaceFileCount = INT_MAX;
        });
        BigRequestAndCheckpoint(ring);
        Check(WaitFor(30, [] { return Count(g_alerts, kPacketAlert) > 0; }), "an Alert for the 2 MiB packet (m_maxMessageAlertSizeMB)");
        Check(WaitFor(30, [] { return Count(g_alerts, kSpaceAlert) > 0; }),
              "an Alert for the checkpoint's free space (m_minCheckpointSpaceFileCount)");
        UnloadAll(ring);
        std::cout << "ok m_maxMessageAlertSizeMB" << std::endl;
        std::cout << "ok m_minCheckpointSpaceFileCount" << std::endl;
    }

    // 3.
    void NvmJournal()
    {
        const auto nvm = [](RSLConfigParam& cfg) {
            std::snprintf(cfg.m_nvmJournalPath, sizeof cfg.m_nvmJournalPath, "%s", "journal.nvm");
            cfg.m_nvmJournalSizeMB = 1;
        };
        {
            // Unsynced log files would let the persistent log release records they lack.
            RSLConfigParam cfg = RingConfig(g_work + "/unsynced", 1, 5);
            nvm(cfg);
            cfg.m_syncWrites = false;
            Machine m;
            Check(!m.Initialize(&cfg, RingNodes(), MakeNode(1), RSLProtocolVersion_6, false), "m_syncWrites = false refused with it");
        }
        Ring ring = Start([&](RSLConfigParam& cfg) {
            nvm(cfg);
            // Start turns syncing off; the NVM journal needs it.
            cfg.m_syncWrites = true;
        });
        Submit(ring, "through the persistent log");
        UnloadAll(ring);
        for (int id = 1; id <= 3; ++id)
        {
            struct stat st;
            const std::string path = g_work + "/ring/" + std::to_string(id) + "/journal.nvm";
            // The header page, then the 1 MiB ring.
            Check(stat(path.c_str(), &st) == 0 && st.st_size == 4096 + (1 << 20), path + " is a persistent log of 1 MiB");
        }
        std::cout << "ok m_nvmJournalPath" << std::endl;
    }

    // 4.
    void DeadlockBreaker()
    {
        Ring ring = Start([](RSLConfigParam& cfg) { cfg.m_voteMaxOutstandingIntervalSec = 10; });
        // Votes chosen promptly never trip the limit.
        Submit(ring, "a");
        int p = -1;
        Check(WaitFor(60, [&] { return (p = PrimaryIndex(ring)) >= 0; }), "a primary");
        Check(!ring[p]->m_shutDown.load(), "a working primary keeps running");
        for (size_t i = 0; i < ring.size(); ++i)
        {
            if (static_cast<int>(i) != p)
            {
                ring[i]->UnloadThisOne();
            }
        }
        Check(WaitFor(60, [&] { return ring[p]->m_shutDown.load(); }),
              "the primary whose vote stays outstanding stops (m_voteMaxOutstandingIntervalSec)");
        Check(Count(g_errors, "vote_max_outstanding_interval_sec") > 0, "an Error entry gives the reason");
        ring[p]->UnloadThisOne();
        std::cout << "ok m_voteMaxOutstandingIntervalSec" << std::endl;
    }
} // namespace

int main(int argc, char** argv)
{
    if (!ReadArgs(argc, argv, "fields_check"))
    {
        return 2;
    }
    g_failPrintsLogTail = true;
    if (!RSLInit((g_work + "/logs").c_str(), false, nullptr, OnLogEntry))
    {
        Fail("RSLInit with a LogEntryCallback");
    }
    NoAlertsByDefault();
    Alerts();
    NvmJournal();
    DeadlockBreaker();
    std::cout << "all ok" << std::endl;
    return 0;
}
