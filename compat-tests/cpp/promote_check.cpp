// Promotion while catching up, and the protocol-version raise, through include/rsl.h.
// compat-tests/tests/cpp_cluster.rs builds it like kv_service and runs
//
//   promote_check <basePort> <workDir>
//
// on ports basePort, +10, +20 (and each +1) of 127.0.0.1, one ring after the other, in one
// process:
//   1. m_allowPrimaryPromotionWhileCatchingUp = false: a secondary stuck in a slow
//      ExecuteReplicatedRequest, asked to stand (AttemptPromotion), is not even asked
//      CanBecomePrimary until the decree has run; then it is, and it is elected;
//   2. the same ring with the flag true: CanBecomePrimary is asked, and the replica is elected,
//      while the decree still runs;
//   3. a ring at RSLProtocolVersion_5 whose primary comes back at RSLProtocolVersion_6: the
//      secondaries rise to 6 as they execute its votes, so the payloads SetVotePayload gave
//      them (a version 6 field, absent before) reach the primary's ReplicaHealth.
// Prints "ok <step>" per step; exits 1 at the first failure.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
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
    // Elections happen only when asked for (the delay is an hour).
    RSLConfigParam Config(const std::string& dir, bool allowCatchingUp)
    {
        RSLConfigParam cfg = RingConfig(dir, 1, 3600);
        cfg.m_prepareRetryIntervalSec = 1;
        cfg.m_voteRetryIntervalSec = 1;
        cfg.m_allowPrimaryPromotionWhileCatchingUp = allowCatchingUp;
        return cfg;
    }

    // Counts executed requests; a replica made slow blocks inside "slow" until released.
    class Machine : public CheckMachine
    {
    public:
        void ExecuteReplicatedRequest(void* request, size_t len, void* /*cookie*/, bool* /*saveState*/) override
        {
            if (m_slow && std::string(static_cast<const char*>(request), len) == "slow")
            {
                std::unique_lock<std::mutex> lock(m_mutex);
                m_blocked = true;
                m_gate.wait(lock, [&] { return m_released; });
                m_blocked = false;
            }
            ++m_executed;
        }

        void Release()
        {
            std::lock_guard<std::mutex> lock(m_mutex);
            m_released = true;
            m_gate.notify_all();
        }

        bool Blocked()
        {
            std::lock_guard<std::mutex> lock(m_mutex);
            return m_blocked;
        }

        bool CanBecomePrimary(RSLPrimaryCookie*) override
        {
            ++m_asked;
            return true;
        }

        bool m_slow = false;
        std::atomic<int> m_executed{0};
        std::atomic<int> m_asked{0};

    private:
        std::mutex m_mutex;
        std::condition_variable m_gate;
        bool m_blocked = false;
        bool m_released = false;
    };

    bool Start(Machine* m, int id, const std::string& dir, bool allowCatchingUp, RSLProtocolVersion version)
    {
        RSLConfigParam cfg = Config(dir, allowCatchingUp);
        RSLNodeCollection nodes = RingNodes();
        return m->Initialize(&cfg, nodes, MakeNode(id), version, false);
    }

    void Elect(Machine* m, const std::string& what)
    {
        Check(WaitFor(60, [&] {
                  if (!m->m_primary.load())
                  {
                      m->AttemptPromotion();
                  }
                  return m->m_primary.load();
              }),
              what);
    }

    // 1 and 2: replica 2 is slow in "slow" and is asked to stand while it runs.
    void CatchingUp(int ring, bool allow)
    {
        const std::string dir = g_work + "/catching-up-" + std::to_string(ring);
        const std::string flag = allow ? " (allowed)" : " (not allowed)";
        std::vector<std::unique_ptr<Machine>> owned;
        std::vector<Machine*> all;
        for (int id = 1; id <= 3; ++id)
        {
            owned.emplace_back(new Machine());
            owned.back()->m_slow = id == 2;
            Check(Start(owned.back().get(), id, dir, allow, RSLProtocolVersion_6), "Initialize " + std::to_string(id));
            all.push_back(owned.back().get());
        }
        Machine* slow = all[1];
        Elect(all[0], "replica 1 is elected" + flag);
        SubmitAndWait(all[0], "a", all, 1);
        std::string request = "slow";
        Check(all[0]->ReplicateRequest(&request[0], request.size(), nullptr) == RSLSuccess, "ReplicateRequest slow");
        Check(WaitFor(60, [&] { return slow->Blocked(); }), "replica 2 executes the slow request" + flag);
        if (allow)
        {
            Check(WaitFor(60, [&] {
                      slow->AttemptPromotion();
                      return slow->m_asked.load() > 0;
                  }),
                  "CanBecomePrimary is asked while a decree runs" + flag);
            Check(slow->Blocked(), "the decree still runs" + flag);
            slow->Release();
            Check(WaitFor(60, [&] { return slow->m_primary.load(); }), "replica 2 is elected" + flag);
        }
        else
        {
            // Several heartbeat intervals of asking: each attempt is put off by one.
            for (int i = 0; i < 8; ++i)
            {
                slow->AttemptPromotion();
                std::this_thread::sleep_for(std::chrono::milliseconds(500));
            }
            Check(slow->m_asked.load() == 0 && !slow->m_primary.load(), "not asked CanBecomePrimary while a decree waits" + flag);
            Check(all[0]->m_primary.load(), "replica 1 still leads" + flag);
            slow->Release();
            Elect(slow, "replica 2 is elected once it has caught up" + flag);
            Check(slow->m_asked.load() > 0, "CanBecomePrimary asked" + flag);
        }
        SubmitAndWait(slow, "b", all, 3);
        UnloadAll(all);
        std::cout << "ok allowPrimaryPromotionWhileCatchingUp" << flag << std::endl;
    }

    // The payload the primary last heard from member `id`; -1 if it lists no such member.
    long long PayloadOf(Machine* primary, int id)
    {
        // It fills the entries it has (and returns how many it needs only when short).
        ReplicaHealth health[8];
        primary->GetReplicasInformation(8, health);
        for (int i = 0; i < 8; ++i)
        {
            if (std::string(health[i].m_memberId) == std::to_string(id))
            {
                return static_cast<long long>(health[i].m_lastVotePayload);
            }
        }
        return -1;
    }

    // 3.
    void VersionRaise()
    {
        const std::string dir = g_work + "/version";
        std::vector<std::unique_ptr<Machine>> owned;
        for (int id = 1; id <= 3; ++id)
        {
            owned.emplace_back(new Machine());
            Check(Start(owned.back().get(), id, dir, false, RSLProtocolVersion_5), "Initialize v5 " + std::to_string(id));
        }
        owned[1]->SetVotePayload(41);
        owned[2]->SetVotePayload(42);
        Elect(owned[0].get(), "replica 1 is elected at v5");
        SubmitAndWait(owned[0].get(), "a", {owned[0].get(), owned[1].get(), owned[2].get()}, 1);
        SubmitAndWait(owned[0].get(), "b", {owned[0].get(), owned[1].get(), owned[2].get()}, 2);
        Check(PayloadOf(owned[0].get(), 2) == 0 && PayloadOf(owned[0].get(), 3) == 0,
              "no payload at version 5 (payloads " + std::to_string(PayloadOf(owned[0].get(), 2)) + ", " +
                  std::to_string(PayloadOf(owned[0].get(), 3)) + ")");

        owned[0]->UnloadThisOne();
        owned[0].reset(new Machine());
        Check(Start(owned[0].get(), 1, dir, false, RSLProtocolVersion_6), "Initialize replica 1 again at v6");
        std::vector<Machine*> all{owned[0].get(), owned[1].get(), owned[2].get()};
        Elect(all[0], "replica 1 is elected again, at v6");
        SubmitAndWait(all[0], "c", all, 3);
        SubmitAndWait(all[0], "d", all, 4);
        Check(WaitFor(60, [&] { return PayloadOf(all[0], 2) == 41 && PayloadOf(all[0], 3) == 42; }),
              "the secondaries answer at version 6 (payloads " + std::to_string(PayloadOf(all[0], 2)) + ", " +
                  std::to_string(PayloadOf(all[0], 3)) + ")");
        UnloadAll(all);
        std::cout << "ok protocol version raised by executing a newer vote" << std::endl;
    }
} // namespace

int main(int argc, char** argv)
{
    if (!ReadArgs(argc, argv, "promote_check"))
    {
        return 2;
    }
    Check(RSLInit(nullptr, false), "RSLInit");
    CatchingUp(0, false);
    CatchingUp(1, true);
    VersionRaise();
    std::cout << "all ok" << std::endl;
    return 0;
}
