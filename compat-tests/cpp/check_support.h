// What the *_check programs share: argument handling, failure reporting, waiting on a
// condition, the ring's nodes and base configuration, starting and stopping requests and
// replicas, and a state machine whose callbacks do nothing until a check overrides them.
// Header-only: the test harness compiles each program as one source file.
#pragma once

#include <arpa/inet.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "rsl.h"

// Replica `id` listens on g_basePort + 10 * (id - 1); scratch files go under g_work.
inline unsigned short g_basePort = 0;
inline std::string g_work;

// Set by a program whose failures want the library's log (written under g_work/logs) shown.
inline bool g_failPrintsLogTail = false;
// Set by a program whose failures end the process at once (std::_Exit: no exit handlers, no
// static destructors).
inline bool g_failExitsAtOnce = false;

// Reads `<basePort> <workDir>`; prints the usage and returns false on anything else.
inline bool ReadArgs(int argc, char** argv, const char* program)
{
    if (argc != 3)
    {
        std::cerr << "usage: " << program << " <basePort> <workDir>\n";
        return false;
    }
    g_basePort = static_cast<unsigned short>(std::atoi(argv[1]));
    g_work = argv[2];
    return true;
}

// Prints the end of the library's log.
inline void PrintLogTail()
{
    std::ifstream log(g_work + "/logs/rsl.log");
    std::deque<std::string> tail;
    for (std::string line; std::getline(log, line);)
    {
        tail.push_back(line);
        if (tail.size() > 60)
        {
            tail.pop_front();
        }
    }
    for (const std::string& line : tail)
    {
        std::cout << "  log: " << line << std::endl;
    }
}

// Reports "FAIL <what>" and exits 1.
[[noreturn]] inline void Fail(const std::string& what)
{
    std::cout << "FAIL " << what << std::endl;
    if (g_failPrintsLogTail)
    {
        PrintLogTail();
    }
    if (g_failExitsAtOnce)
    {
        std::_Exit(1);
    }
    std::exit(1);
}

inline void Check(bool ok, const std::string& what)
{
    if (!ok)
    {
        Fail(what);
    }
}

// Waits up to `seconds` for `cond`.
inline bool WaitFor(int seconds, const std::function<bool()>& cond)
{
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    while (std::chrono::steady_clock::now() < end)
    {
        if (cond())
        {
            return true;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return cond();
}

// Replica `id` (from 1) on 127.0.0.1.
inline RSLib::RSLNode MakeNode(int id)
{
    RSLib::RSLNode node;
    node.SetMemberIdAsUInt64(static_cast<unsigned long long>(id));
    std::snprintf(node.m_hostName, sizeof node.m_hostName, "localhost");
    node.m_ip = inet_addr("127.0.0.1");
    node.m_rslPort = static_cast<unsigned short>(g_basePort + 10 * (id - 1));
    return node;
}

// The replicas `ids`.
inline RSLib::RSLNodeCollection RingNodes(const std::vector<int>& ids = {1, 2, 3})
{
    RSLib::RSLNodeCollection nodes;
    for (int id : ids)
    {
        nodes.Append(MakeNode(id));
    }
    return nodes;
}

// Short heartbeat and retries, each member in its own directory under `dir`.
inline RSLib::RSLConfigParam RingConfig(const std::string& dir, unsigned int gracePeriodSec, unsigned int electionDelaySec)
{
    RSLib::RSLConfigParam cfg;
    cfg.m_newLeaderGracePeriodSec = gracePeriodSec;
    cfg.m_heartBeatIntervalSec = 1;
    cfg.m_electionDelaySec = electionDelaySec;
    cfg.m_maxElectionRandomizeSec = 1;
    cfg.m_initializeRetryIntervalSec = 1;
    std::snprintf(cfg.m_workingDir, sizeof cfg.m_workingDir, "%s", dir.c_str());
    cfg.m_addMemberIdToWorkingDir = true;
    return cfg;
}

// Unloads every replica of `ring` (a range of pointers to machines).
template <class Ring> void UnloadAll(Ring& ring)
{
    for (auto& m : ring)
    {
        m->UnloadThisOne();
    }
}

// Unloads every replica of `ring` (a range of unique_ptrs), then deletes each.
template <class Ring> void DeleteAll(Ring& ring)
{
    UnloadAll(ring);
    for (auto& m : ring)
    {
        m.reset();
    }
}

// The index of the replica of `ring` that is primary now, or -1.
template <class M> int PrimaryIndex(const std::vector<std::unique_ptr<M>>& ring)
{
    for (size_t i = 0; i < ring.size(); ++i)
    {
        if (ring[i]->m_primary.load())
        {
            return static_cast<int>(i);
        }
    }
    return -1;
}

// Replicates `request` through `primary` and waits until each of `all` has executed `executed`
// requests (counted in its m_executed).
template <class M> void SubmitAndWait(M* primary, const std::string& request, const std::vector<M*>& all, int executed)
{
    std::string copy = request;
    Check(primary->ReplicateRequest(&copy[0], copy.size(), nullptr) == RSLib::RSLSuccess, "ReplicateRequest " + request);
    Check(WaitFor(60, [&] {
              for (M* m : all)
              {
                  if (m->m_executed.load() < executed)
                  {
                      return false;
                  }
              }
              return true;
          }),
          "every replica executes " + request);
}

// A state machine that tracks whether it is primary; the callbacks a check does not look at do
// nothing (LoadState accepts an empty state). A check overrides what it records.
class CheckMachine : public RSLib::RSLStateMachine
{
public:
    bool LoadState(RSLib::RSLCheckpointStreamReader*) override { return true; }
    void ExecuteFastReadRequest(void*, size_t, void*) override {}
    void AbortRequest(RSLib::RSLResponseCode, void*) override {}
    void SaveState(RSLib::RSLCheckpointStreamWriter*) override {}
    void NotifyStatus(bool isPrimary) override { m_primary = isPrimary; }
    void NotifyConfigurationChanged(void*) override {}
    void AbortChangeConfiguration(RSLib::RSLResponseCode, void*) override {}
    void ShutDown(RSLib::RSLResponseCode) override {}

    std::atomic<bool> m_primary{false};
};
