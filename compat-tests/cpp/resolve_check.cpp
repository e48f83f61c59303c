// RSLStateMachine::ResolveNode on the replica's resolver thread, through include/rsl.h (issue 12
// item 6). compat-tests/tests/cpp_cluster.rs builds it like kv_service and runs
//
//   resolve_check <basePort> <workDir>
//
// with replicas 1..3 on ports basePort, +10, +20 (and each +1) of 127.0.0.1. Each machine's
// ResolveNode answers from one shared directory (the service's name service) and counts the
// calls per member:
//   a. every replica resolves both its peers at start-up;
//   b. a secondary stops and the directory forgets it: the primary's failed connections call
//      ResolveNode again, in vain, and its ReplicaHealth says m_needsResolve, not connected;
//   c. the secondary comes back on another port, which the directory now gives: the primary
//      follows it there (connected, m_needsResolve false) and the writes made while it was away
//      and after reach it.
// Prints "ok <step>" per step and "all ok"; exits 1 at the first failure.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "check_support.h"
#include "rsl.h"

using namespace RSLib;

namespace
{
    // A port from the OS whose next port is free too (the learn port).
    unsigned short FreePortPair()
    {
        for (int attempt = 0; attempt < 100; ++attempt)
        {
            int a = socket(AF_INET, SOCK_STREAM, 0);
            int b = socket(AF_INET, SOCK_STREAM, 0);
            sockaddr_in addr;
            std::memset(&addr, 0, sizeof addr);
            addr.sin_family = AF_INET;
            addr.sin_addr.s_addr = inet_addr("127.0.0.1");
            socklen_t len = sizeof addr;
            unsigned short port = 0;
            if (bind(a, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
                getsockname(a, reinterpret_cast<sockaddr*>(&addr), &len) == 0)
            {
                port = ntohs(addr.sin_port);
                addr.sin_port = htons(static_cast<unsigned short>(port + 1));
                if (port == 65535 || bind(b, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
                {
                    port = 0;
                }
            }
            close(a);
            close(b);
            if (port != 0)
            {
                return port;
            }
        }
        Fail("a free port pair");
    }

    std::string Id(int id) { return std::to_string(id); }

    RSLNode MakeNode(int id, unsigned short port)
    {
        RSLNode node;
        node.SetMemberIdAsUInt64(static_cast<unsigned long long>(id));
        std::snprintf(node.m_hostName, sizeof node.m_hostName, "replica-%d", id);
        node.m_ip = inet_addr("127.0.0.1");
        node.m_rslPort = port;
        node.m_rslLearnPort = static_cast<unsigned short>(port + 1);
        return node;
    }

    RSLNode Configured(int id) { return MakeNode(id, static_cast<unsigned short>(g_basePort + 10 * (id - 1))); }

    // The service's name service: where each member is now (0: not known now).
    std::mutex g_directoryLock;
    std::map<std::string, unsigned short> g_directory;

    void Publish(int id, unsigned short port)
    {
        std::lock_guard<std::mutex> lock(g_directoryLock);
        g_directory[Id(id)] = port;
    }

    RSLConfigParam Config()
    {
        RSLConfigParam cfg = RingConfig(g_work + "/ring", 3, 3);
        cfg.m_cPQueryRetryIntervalSec = 1;
        cfg.m_catchUpByRestart = false;
        return cfg;
    }

    // The state: how many requests executed. ResolveNode answers from the directory.
    class Machine : public CheckMachine
    {
    public:
        bool LoadState(RSLCheckpointStreamReader* reader) override
        {
            unsigned long long count = 0;
            if (reader != nullptr)
            {
                unsigned int read = 0;
                if (reader->GetData(&count, sizeof count, &read) != NO_ERROR || read != sizeof count)
                {
                    return false;
                }
            }
            m_count = count;
            return true;
        }

        void ExecuteReplicatedRequest(void*, size_t, void*, bool*) override { ++m_count; }

        void SaveState(RSLCheckpointStreamWriter* writer) override
        {
            const unsigned long long count = m_count.load();
            writer->Write(&count, sizeof count);
        }

        bool ResolveNode(RSLNode* node) override
        {
            const std::string id = node->m_memberIdString;
            {
                std::lock_guard<std::mutex> lock(m_askedLock);
                ++m_asked[id];
            }
            std::lock_guard<std::mutex> lock(g_directoryLock);
            const unsigned short port = g_directory[id];
            if (port == 0)
            {
                return false;
            }
            node->m_ip = inet_addr("127.0.0.1");
            node->m_rslPort = port;
            node->m_rslLearnPort = static_cast<unsigned short>(port + 1);
            return true;
        }

        int Asked(int id)
        {
            std::lock_guard<std::mutex> lock(m_askedLock);
            return m_asked[Id(id)];
        }

        std::atomic<unsigned long long> m_count{0};

    private:
        std::mutex m_askedLock;
        std::map<std::string, int> m_asked;
    };

    std::unique_ptr<Machine> Start(int id, unsigned short port)
    {
        std::unique_ptr<Machine> m(new Machine());
        RSLConfigParam cfg = Config();
        RSLNodeCollection nodes;
        for (int i = 1; i <= 3; ++i)
        {
            nodes.Append(Configured(i));
        }
        Check(m->Initialize(&cfg, nodes, MakeNode(id, port), RSLProtocolVersion_6, false), "Initialize replica " + Id(id));
        return m;
    }

    struct Ring
    {
        std::unique_ptr<Machine> m[3];
        unsigned counter = 0;

        int Primary()
        {
            int p = -1;
            Check(WaitFor(60, [&] {
                      for (int i = 0; i < 3; ++i)
                      {
                          if (m[i] && m[i]->m_primary.load())
                          {
                              p = i;
                              return true;
                          }
                      }
                      return false;
                  }),
                  "a primary");
            return p;
        }

        void Write(int n)
        {
            Machine* p = m[Primary()].get();
            const unsigned long long target = p->m_count.load() + static_cast<unsigned long long>(n);
            for (int i = 0; i < n; ++i)
            {
                std::string request = "request " + std::to_string(counter++);
                Check(WaitFor(60, [&] { return p->ReplicateRequest(&request[0], request.size(), nullptr) == RSLSuccess; }),
                      "ReplicateRequest");
            }
            Check(WaitFor(60, [&] { return p->m_count.load() >= target; }), "the primary executes what it was sent");
        }

        void Converged(int i, const std::string& what)
        {
            Machine* p = m[Primary()].get();
            Check(WaitFor(60, [&] { return m[i]->m_count.load() == p->m_count.load(); }), what + ": replica " + Id(i + 1) +
                                                                                             " holds every request");
        }

        // The primary's ReplicaHealth entry for replica `i`, when `cond` holds for it.
        bool Health(int p, int i, const std::function<bool(const ReplicaHealth&)>& cond)
        {
            ReplicaHealth health[3];
            m[p]->GetReplicasInformation(3, health);
            for (const ReplicaHealth& h : health)
            {
                if (Id(i + 1) == h.m_memberId)
                {
                    return cond(h);
                }
            }
            return false;
        }
    };
} // namespace

int main(int argc, char** argv)
{
    if (!ReadArgs(argc, argv, "resolve_check"))
    {
        return 2;
    }
    if (!RSLInit(nullptr, false))
    {
        Fail("RSLInit");
    }
    Ring ring;
    for (int id = 1; id <= 3; ++id)
    {
        Publish(id, Configured(id).m_rslPort);
    }
    for (int i = 0; i < 3; ++i)
    {
        ring.m[i] = Start(i + 1, Configured(i + 1).m_rslPort);
    }
    for (int i = 0; i < 3; ++i)
    {
        for (int j = 0; j < 3; ++j)
        {
            Check(j == i || WaitFor(60, [&] { return ring.m[i]->Asked(j + 1) > 0; }),
                  "replica " + Id(i + 1) + " resolves its peer " + Id(j + 1) + " at start-up");
        }
    }
    std::cout << "ok every replica resolves its peers at start-up" << std::endl;

    ring.Write(10);
    for (int i = 0; i < 3; ++i)
    {
        ring.Converged(i, "start");
    }
    const int p = ring.Primary();
    const int s = (p + 1) % 3;
    Check(WaitFor(60, [&] { return ring.Health(p, s, [](const ReplicaHealth& h) { return h.m_connected && !h.m_needsResolve; }); }),
          "the primary is connected to the secondary");

    Publish(s + 1, 0);
    ring.m[s]->UnloadThisOne();
    ring.m[s].reset();
    const int asked = ring.m[p]->Asked(s + 1);
    Check(WaitFor(60, [&] { return ring.m[p]->Asked(s + 1) > asked; }), "a failed connection makes the primary resolve again");
    Check(WaitFor(60, [&] { return ring.Health(p, s, [](const ReplicaHealth& h) { return h.m_needsResolve && !h.m_connected; }); }),
          "the primary reports m_needsResolve while the member cannot be resolved");
    ring.Write(10);
    std::cout << "ok a failed connection calls ResolveNode and m_needsResolve stays until it succeeds" << std::endl;

    const unsigned short moved = FreePortPair();
    Publish(s + 1, moved);
    ring.m[s] = Start(s + 1, moved);
    ring.Write(10);
    ring.Converged(s, "moved");
    // (An election the member started while nobody could reach it may have moved the primary.)
    Check(WaitFor(60, [&] {
              const int q = ring.Primary();
              return q == s || ring.Health(q, s, [](const ReplicaHealth& h) { return h.m_connected && !h.m_needsResolve; });
          }),
          "the primary is connected to the member where it moved");
    std::cout << "ok the moved replica rejoins on its new port" << std::endl;

    DeleteAll(ring.m);
    std::cout << "all ok" << std::endl;
    return 0;
}
