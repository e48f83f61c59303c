// Catch-up by checkpoint through include/rsl.h (docs/spec/behavior.md §2.11, issue 12 item 2).
// compat-tests/tests/cpp_cluster.rs builds it like kv_service and runs
//
//   catchup_check <basePort> <workDir>
//
// with replicas 1..3 on ports basePort, +10, +20 (and each +1) of 127.0.0.1, logs of 1 MB:
//   a. replica 3 stops while the others write past every log it could learn from. Started
//      again in a child process with the default RSLConfigParam (m_catchUpByRestart), it
//      copies a checkpoint: StateCopied(seq, file, NULL), ShutDown(RSLShuttingDown), and the
//      process exits with status 0 without a LoadState in place. Restarted in this process on
//      the same directory, LoadState gets the copied checkpoint and the replica holds every
//      request the others hold.
//   b. the same again with m_catchUpByRestart = false, in this process: LoadState is called in
//      place with the copied checkpoint, then StateCopied(seq, file, NULL), and the replica goes
//      on and holds every request.
// The child is this program again: catchup_check child <basePort> <workDir>.
// Prints "ok <step>" per step and "all ok"; exits 1 at the first failure.

#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "check_support.h"
#include "rsl.h"

extern char** environ;

using namespace RSLib;

namespace
{
    // m_catchUpByRestart is left at its default: the original's.
    RSLConfigParam Config()
    {
        RSLConfigParam cfg = RingConfig(g_work + "/ring", 3, 3);
        cfg.m_cPQueryRetryIntervalSec = 1;
        cfg.m_maxLogLenMB = 1;
        return cfg;
    }

    uint64_t Fold(uint64_t h, const void* data, size_t len)
    {
        const unsigned char* p = static_cast<const unsigned char*>(data);
        for (size_t i = 0; i < len; ++i)
        {
            h = (h ^ p[i]) * 0x100000001b3ULL;
        }
        return h;
    }

    // The state: how many requests executed and a hash of all of them, in order. Records the
    // callbacks of catch-up, and appends them to `events` when it is set (the child's, read
    // by the parent after the child has exited).
    class Machine : public CheckMachine
    {
    public:
        explicit Machine(std::string events = std::string()) : m_eventsFile(std::move(events)) {}

        bool LoadState(RSLCheckpointStreamReader* reader) override
        {
            uint64_t state[2] = {0, 0xcbf29ce484222325ULL};
            if (reader != nullptr)
            {
                unsigned int read = 0;
                if (reader->GetData(state, sizeof state, &read) != NO_ERROR || read != sizeof state)
                {
                    return false;
                }
            }
            {
                std::lock_guard<std::mutex> lock(m_mutex);
                m_count = state[0];
                m_hash = state[1];
            }
            (reader != nullptr ? m_loadsWithCheckpoint : m_loadsEmpty)++;
            Event(std::string("load ") + (reader != nullptr ? "1" : "0"));
            return true;
        }

        void ExecuteReplicatedRequest(void* request, size_t len, void* /*cookie*/, bool* /*saveState*/) override
        {
            std::lock_guard<std::mutex> lock(m_mutex);
            ++m_count;
            m_hash = Fold(m_hash, request, len);
        }

        void SaveState(RSLCheckpointStreamWriter* writer) override
        {
            std::lock_guard<std::mutex> lock(m_mutex);
            const uint64_t state[2] = {m_count, m_hash};
            writer->Write(state, sizeof state);
        }

        void ShutDown(RSLResponseCode status) override
        {
            ++m_shutDowns;
            Event("shutdown " + std::to_string(static_cast<int>(status)));
        }

        void StateSaved(unsigned long long seqNo, const char* /*fileName*/) override { Max(m_savedSeq, seqNo); }

        void StateCopied(unsigned long long seqNo, const char* fileName, void* cookie) override
        {
            struct stat st;
            const bool placed = fileName != nullptr && stat(fileName, &st) == 0;
            if (cookie == nullptr && placed)
            {
                Max(m_copiedSeq, seqNo);
            }
            Event("copied " + std::to_string(seqNo) + " " + (placed ? "1" : "0") + " " + (cookie == nullptr ? "NULL" : "cookie"));
        }

        std::pair<uint64_t, uint64_t> State()
        {
            std::lock_guard<std::mutex> lock(m_mutex);
            return {m_count, m_hash};
        }

        std::atomic<int> m_loadsEmpty{0};
        std::atomic<int> m_loadsWithCheckpoint{0};
        std::atomic<int> m_shutDowns{0};
        std::atomic<unsigned long long> m_savedSeq{0};
        std::atomic<unsigned long long> m_copiedSeq{0};

    private:
        static void Max(std::atomic<unsigned long long>& at, unsigned long long v)
        {
            unsigned long long now = at.load();
            while (v > now && !at.compare_exchange_weak(now, v))
            {
            }
        }

        void Event(const std::string& line)
        {
            if (m_eventsFile.empty())
            {
                return;
            }
            std::ofstream out(m_eventsFile, std::ios::app);
            out << line << '\n';
            out.flush();
        }

        std::string m_eventsFile;
        std::mutex m_mutex;
        uint64_t m_count = 0;
        uint64_t m_hash = 0xcbf29ce484222325ULL;
    };

    std::unique_ptr<Machine> Start(int id, const RSLConfigParam& base, const std::string& events = std::string())
    {
        std::unique_ptr<Machine> m(new Machine(events));
        RSLConfigParam cfg = base;
        RSLNodeCollection nodes = RingNodes();
        Check(m->Initialize(&cfg, nodes, MakeNode(id), RSLProtocolVersion_6, false), "Initialize replica " + std::to_string(id));
        return m;
    }

    // The child: replica 3 with the default configuration. The shim ends this process once the
    // replica has copied a checkpoint; reaching the end of the wait is a failure.
    int Child()
    {
        std::unique_ptr<Machine> m = Start(3, Config(), g_work + "/child_events");
        std::this_thread::sleep_for(std::chrono::seconds(120));
        std::cout << "FAIL the child never exited" << std::endl;
        std::_Exit(3);
    }

    // The three machines of this process; a null one is stopped.
    struct Ring
    {
        std::unique_ptr<Machine> m[3];
        unsigned counter = 0;

        Machine* Primary()
        {
            Machine* p = nullptr;
            Check(WaitFor(60, [&] {
                      for (auto& m : this->m)
                      {
                          if (m && m->m_primary.load())
                          {
                              p = m.get();
                              return true;
                          }
                      }
                      return false;
                  }),
                  "a primary");
            return p;
        }

        // `n` requests of 5 KB through the primary; waits until it executed them.
        void Write(int n)
        {
            Machine* p = Primary();
            const uint64_t target = p->State().first + static_cast<uint64_t>(n);
            for (int i = 0; i < n; ++i)
            {
                std::string request = std::to_string(counter++) + ":";
                request.resize(5000, 'x');
                Check(WaitFor(60, [&] { return p->ReplicateRequest(&request[0], request.size(), nullptr) == RSLSuccess; }),
                      "ReplicateRequest");
            }
            Check(WaitFor(60, [&] { return p->State().first >= target; }), "the primary executes what it was sent");
        }

        // Waits until replica `i` holds what the primary holds.
        void Converged(int i, const std::string& what)
        {
            Machine* p = Primary();
            Check(WaitFor(60, [&] { return m[i]->State() == p->State(); }), what + ": replica holds every request");
        }

        // Writes until both running replicas checkpointed past `seq` (the secondary saved one,
        // the primary copied one): neither still serves the votes after `seq` to a learner.
        void WritePast(unsigned long long seq)
        {
            auto past = [&] {
                Machine* p = Primary();
                for (auto& s : m)
                {
                    if (s && s.get() != p && s->m_savedSeq.load() <= seq)
                    {
                        return false;
                    }
                }
                return p->m_copiedSeq.load() > seq;
            };
            Write(800);
            for (int round = 0; round < 20 && !WaitFor(5, past); ++round)
            {
                Write(200);
            }
            Check(past(), "the others checkpoint past " + std::to_string(seq));
        }
    };

    std::string ReadFile(const std::string& path)
    {
        std::ifstream in(path);
        std::stringstream s;
        s << in.rdbuf();
        return s.str();
    }

    // Runs this program as the child and waits for it to end.
    int RunChild(const char* self)
    {
        const std::string port = std::to_string(g_basePort);
        std::vector<char*> argv = {const_cast<char*>(self), const_cast<char*>("child"), const_cast<char*>(port.c_str()),
                                   const_cast<char*>(g_work.c_str()), nullptr};
        pid_t pid = 0;
        Check(posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv.data(), environ) == 0, "spawn the child");
        int status = 0;
        const bool ended = WaitFor(120, [&] { return waitpid(pid, &status, WNOHANG) == pid; });
        if (!ended)
        {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            Fail("the child did not exit within 120 s");
        }
        Check(WIFEXITED(status), "the child exited (status " + std::to_string(status) + ")");
        return WEXITSTATUS(status);
    }

    void ByRestart(Ring& ring, const char* self)
    {
        ring.Write(10);
        for (int i = 0; i < 3; ++i)
        {
            ring.Converged(i, "start");
        }
        const unsigned long long behind = ring.m[2]->GetCurrentSequenceNumber();
        ring.m[2].reset();
        ring.WritePast(behind);

        Check(RunChild(self) == 0, "the child exits with status 0 after catching up");
        const std::string events = ReadFile(g_work + "/child_events");
        std::istringstream lines(events);
        std::vector<std::string> got;
        for (std::string line; std::getline(lines, line);)
        {
            got.push_back(line);
        }
        Check(got.size() == 3 && got[0] == "load 0" && got[1].rfind("copied ", 0) == 0 && got[1].find(" 1 NULL") != std::string::npos &&
                  got[2] == "shutdown " + std::to_string(static_cast<int>(RSLShuttingDown)),
              "the child loaded its own state, then StateCopied(seq, file, NULL), ShutDown(RSLShuttingDown), nothing else: " +
                  events);
        const unsigned long long copied = std::stoull(got[1].substr(7));
        Check(copied > behind, "the copied checkpoint is past where the replica stopped");
        std::cout << "ok the default copies, calls ShutDown and exits 0" << std::endl;

        ring.m[2] = Start(3, Config());
        Check(ring.m[2]->m_loadsWithCheckpoint.load() == 1 && ring.m[2]->m_loadsEmpty.load() == 0,
              "the restart loads the copied checkpoint");
        Check(ring.m[2]->State().first >= 10, "the checkpoint holds the requests");
        ring.Write(10);
        ring.Converged(2, "restarted");
        Check(ring.m[2]->m_shutDowns.load() == 0, "the restarted replica runs");
        std::cout << "ok the restart loads the copied checkpoint and catches up" << std::endl;
    }

    void InPlace(Ring& ring)
    {
        const unsigned long long behind = ring.m[2]->GetCurrentSequenceNumber();
        ring.m[2].reset();
        ring.WritePast(behind);
        RSLConfigParam cfg = Config();
        cfg.m_catchUpByRestart = false;
        ring.m[2] = Start(3, cfg);
        Machine* m = ring.m[2].get();
        Check(WaitFor(60, [&] { return m->m_copiedSeq.load() > behind; }), "StateCopied(seq, file, NULL) past where it stopped");
        // Once by Initialize (the checkpoint step a copied), once in place.
        Check(m->m_loadsWithCheckpoint.load() == 2 && m->m_loadsEmpty.load() == 0,
              "LoadState was called in place with the copied checkpoint");
        ring.Write(10);
        ring.Converged(2, "in place");
        Check(m->m_shutDowns.load() == 0, "the replica goes on");
        std::cout << "ok the opt-in loads the copied checkpoint in place and goes on" << std::endl;
    }
} // namespace

int main(int argc, char** argv)
{
    const bool child = argc == 4 && std::string(argv[1]) == "child";
    if (argc != 3 && !child)
    {
        std::cerr << "usage: catchup_check <basePort> <workDir>\n";
        return 2;
    }
    g_basePort = static_cast<unsigned short>(std::atoi(argv[child ? 2 : 1]));
    g_work = argv[child ? 3 : 2];
    if (!RSLInit(nullptr, false))
    {
        Fail("RSLInit");
    }
    if (child)
    {
        return Child();
    }
    Check(RSLConfigParam().m_catchUpByRestart, "the default is the original's catch-up by restart");
    Ring ring;
    for (int i = 0; i < 3; ++i)
    {
        ring.m[i] = Start(i + 1, Config());
    }
    ByRestart(ring, argv[0]);
    InPlace(ring);
    DeleteAll(ring.m);
    std::cout << "all ok" << std::endl;
    return 0;
}
