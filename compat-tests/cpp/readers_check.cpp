// Fast reads on m_numReaderThreads reader threads under RSL's callback lock, through
// include/rsl.h. compat-tests/tests/cpp_cluster.rs builds it like kv_service and runs
//
//   readers_check <basePort> <workDir>
//
// with one-member rings on 127.0.0.1 ports basePort and basePort+10 (each +1), in one process:
//   1. two reads that each wait for the other to start both see the other (2 reader threads);
//      on a ring with 1 reader thread the first gives up waiting and only then the second runs;
//   2. a read runs while SaveState is in progress (SaveState waits for one);
//   3. no read runs while a decree executes: reads issued during a slow decree (one satisfied,
//      one for the next decree) run after it, and the second only once its decree executed;
//   and every read comes back once (run or aborted), none after ShutDown.
// Prints "ok <step>" per step; exits 1 at the first failure.

#include <arpa/inet.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "check_support.h"
#include "rsl.h"

using namespace RSLib;

namespace
{
    void* CookieOf(std::uintptr_t n) { return reinterpret_cast<void*>(n); }
    std::uintptr_t IdOf(void* cookie) { return reinterpret_cast<std::uintptr_t>(cookie); }

    // What one read saw.
    struct Seen
    {
        std::uintptr_t id;
        bool partner;
        bool executing;
        bool saving;
        unsigned long long seq;
    };

    // Requests: "slow" executes until released, "save" asks for a checkpoint. Reads: "pair"
    // waits (up to 5 s) for a second read to start; any read records what it saw.
    class Machine : public CheckMachine
    {
    public:
        void ExecuteReplicatedRequest(void* request, size_t len, void*, bool* saveState) override
        {
            const std::string r(static_cast<const char*>(request), len);
            m_executing = true;
            Notify();
            if (r == "slow")
            {
                Await(30, [&] { return m_release.load(); });
            }
            *saveState = r == "save";
            m_executing = false;
            ++m_executed;
        }

        void ExecuteFastReadRequest(void* request, size_t len, void* cookie) override
        {
            m_late = m_late || m_shutDown;
            const std::string r(static_cast<const char*>(request), len);
            const bool executing = m_executing, saving = m_saving;
            if (saving)
            {
                m_readDuringSave = true;
            }
            {
                std::lock_guard<std::mutex> lock(m_mutex);
                ++m_started;
            }
            Notify();
            const bool partner = r == "pair" && Await(5, [&] { return m_started >= 2; });
            std::lock_guard<std::mutex> lock(m_mutex);
            m_reads.push_back(Seen{IdOf(cookie), partner, executing, saving, GetCurrentSequenceNumber()});
        }

        void AbortRequest(RSLResponseCode status, void* cookie) override
        {
            m_late = m_late || m_shutDown;
            std::lock_guard<std::mutex> lock(m_mutex);
            m_aborted.push_back(IdOf(cookie));
            m_abortsOk = m_abortsOk && status == RSLShuttingDown;
        }

        void SaveState(RSLCheckpointStreamWriter* writer) override
        {
            m_saving = true;
            Notify();
            Await(30, [&] { return m_readDuringSave.load(); });
            m_saving = false;
            writer->Write("state", 5);
        }

        void ShutDown(RSLResponseCode) override { m_shutDown = true; }

        // The record of read `id`, once it ran.
        Seen Outcome(std::uintptr_t id)
        {
            Seen found{};
            Check(WaitFor(60, [&] {
                      std::lock_guard<std::mutex> lock(m_mutex);
                      for (const Seen& s : m_reads)
                      {
                          if (s.id == id)
                          {
                              found = s;
                              return true;
                          }
                      }
                      return false;
                  }),
                  "read " + std::to_string(id) + " runs");
            return found;
        }

        size_t Ran()
        {
            std::lock_guard<std::mutex> lock(m_mutex);
            return m_reads.size();
        }

        // Every read in `ids` ran or was aborted (ShuttingDown), once.
        bool AllBack(const std::vector<std::uintptr_t>& ids)
        {
            std::lock_guard<std::mutex> lock(m_mutex);
            std::vector<std::uintptr_t> back;
            for (const Seen& s : m_reads)
            {
                back.push_back(s.id);
            }
            back.insert(back.end(), m_aborted.begin(), m_aborted.end());
            std::sort(back.begin(), back.end());
            std::vector<std::uintptr_t> want = ids;
            std::sort(want.begin(), want.end());
            return m_abortsOk && back == want;
        }

        void Release()
        {
            m_release = true;
            Notify();
        }

        std::atomic<bool> m_executing{false};
        std::atomic<bool> m_saving{false};
        std::atomic<bool> m_readDuringSave{false};
        std::atomic<bool> m_shutDown{false};
        std::atomic<bool> m_late{false};
        std::atomic<int> m_executed{0};

    private:
        void Notify()
        {
            std::lock_guard<std::mutex> lock(m_mutex);
            m_turn.notify_all();
        }

        // Waits up to `seconds` for `cond` (checked under m_mutex); false if it never held.
        bool Await(int seconds, const std::function<bool()>& cond)
        {
            std::unique_lock<std::mutex> lock(m_mutex);
            return m_turn.wait_for(lock, std::chrono::seconds(seconds), cond);
        }

        std::mutex m_mutex;
        std::condition_variable m_turn;
        int m_started = 0;
        std::atomic<bool> m_release{false};
        std::vector<Seen> m_reads;
        std::vector<std::uintptr_t> m_aborted;
        bool m_abortsOk = true;
    };

    RSLNode MakeNode(unsigned short port)
    {
        RSLNode node;
        node.SetMemberIdAsUInt64(1);
        std::snprintf(node.m_hostName, sizeof node.m_hostName, "localhost");
        node.m_ip = inet_addr("127.0.0.1");
        node.m_rslPort = port;
        return node;
    }

    // A one-member ring with `readers` reader threads, primary.
    void Start(Machine* m, unsigned short port, unsigned int readers, const std::string& name)
    {
        RSLConfigParam cfg;
        cfg.m_newLeaderGracePeriodSec = 1;
        cfg.m_heartBeatIntervalSec = 1;
        cfg.m_electionDelaySec = 1;
        cfg.m_fastReadSeqThreshold = 10;
        cfg.m_numReaderThreads = readers;
        std::snprintf(cfg.m_workingDir, sizeof cfg.m_workingDir, "%s/%s", g_work.c_str(), name.c_str());
        RSLNodeCollection nodes;
        nodes.Append(MakeNode(port));
        Check(m->Initialize(&cfg, nodes, MakeNode(port), RSLProtocolVersion_6, true), "Initialize " + name);
        Check(WaitFor(60, [&] { return m->m_primary.load(); }), name + " becomes primary");
    }

    void Read(Machine* m, unsigned long long maxSeen, const char* what, std::uintptr_t id)
    {
        Check(m->FastReadRequest(maxSeen, const_cast<char*>(what), std::strlen(what), CookieOf(id), 30000) == RSLSuccess,
              "FastReadRequest " + std::to_string(id));
    }

    void Replicate(Machine* m, const char* what)
    {
        Check(m->ReplicateRequest(const_cast<char*>(what), std::strlen(what), nullptr) == RSLSuccess, std::string("ReplicateRequest ") + what);
    }

    void Stop(Machine* m, const std::vector<std::uintptr_t>& ids)
    {
        m->Release();
        m->UnloadThisOne();
        Check(m->m_shutDown.load() && !m->m_late.load(), "ShutDown came last");
        Check(m->AllBack(ids), "every read ran or was aborted with RSLShuttingDown, once");
    }

    void Concurrent()
    {
        std::unique_ptr<Machine> two(new Machine());
        Start(two.get(), g_basePort, 2, "two");
        Read(two.get(), 0, "pair", 1);
        Read(two.get(), 0, "pair", 2);
        Check(two->Outcome(1).partner && two->Outcome(2).partner, "two reads run at once on 2 reader threads");
        std::cout << "ok reads run concurrently" << std::endl;

        // 2: a read inside SaveState (it waits for one).
        Replicate(two.get(), "save");
        Check(WaitFor(60, [&] { return two->m_saving.load(); }), "SaveState starts");
        Read(two.get(), 0, "read", 3);
        const Seen during = two->Outcome(3);
        Check(during.saving && !during.executing && two->m_readDuringSave.load(), "a read runs while SaveState is in progress");
        std::cout << "ok read during SaveState" << std::endl;

        // 3: reads issued during a slow decree run after it; the one for the next decree once
        // that has executed.
        const unsigned long long before = two->GetCurrentSequenceNumber();
        const int executed = two->m_executed.load();
        Replicate(two.get(), "slow");
        Check(WaitFor(60, [&] { return two->m_executing.load() && two->m_executed.load() == executed; }), "the slow decree executes");
        const unsigned long long slow = two->GetCurrentSequenceNumber();
        Check(slow > before, "the slow decree's number");
        const size_t ran = two->Ran();
        Read(two.get(), before, "read", 4);
        Read(two.get(), slow + 1, "read", 5);
        // Every chance to run inside the decree, were the lock not held.
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        Check(two->Ran() == ran, "no read runs while a decree executes");
        two->Release();
        const Seen after = two->Outcome(4);
        Check(!after.executing && after.seq >= slow, "the satisfied read runs once the decree has executed");
        Replicate(two.get(), "next");
        const Seen next = two->Outcome(5);
        Check(!next.executing && next.seq > slow, "the read for the next decree runs once it has executed");
        std::cout << "ok no read during an executing decree" << std::endl;
        Stop(two.get(), {1, 2, 3, 4, 5});

        // 1, with one reader thread: the first "pair" read waits alone and gives up.
        std::unique_ptr<Machine> one(new Machine());
        Start(one.get(), static_cast<unsigned short>(g_basePort + 10), 1, "one");
        Read(one.get(), 0, "pair", 1);
        Read(one.get(), 0, "pair", 2);
        Check(!one->Outcome(1).partner && one->Outcome(2).partner, "on 1 reader thread the reads run one at a time");
        // Unloaded with reads queued or waiting for a decree: every read still comes back.
        Read(one.get(), 0, "pair", 3);
        Read(one.get(), 0, "read", 4);
        Read(one.get(), one->GetCurrentSequenceNumber() + 5, "read", 6);
        Stop(one.get(), {1, 2, 3, 4, 6});
        std::cout << "ok one reader thread" << std::endl;
    }
}

int main(int argc, char** argv)
{
    if (!ReadArgs(argc, argv, "readers_check"))
    {
        return 2;
    }
    if (!RSLInit(nullptr, false))
    {
        Fail("RSLInit");
    }
    Concurrent();
    std::cout << "all ok" << std::endl;
    return 0;
}
