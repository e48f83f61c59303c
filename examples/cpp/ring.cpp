// A minimal replicated service on the RSLib C++ API (rsl.h): three replicas in this process
// form a ring on 127.0.0.1 (every port from the OS), the primary replicates three requests,
// and each replica prints the state it reached.
//
//   ring [working dir]      (default: a new directory under /tmp)
//
// Build against an installed rsl (cargo xtask install --prefix DIR) with CMake:
//   cmake -S examples/cpp -B build -DCMAKE_PREFIX_PATH=DIR && cmake --build build && build/ring
// Exit status 0 once every replica holds the three requests.
#include <rsl.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace
{
const std::array<std::string, 3> kRequests = {"hello", "replicated", "world"};
const auto kDeadline = std::chrono::seconds(60);

// The replicated state: the requests executed, in order.
class Words : public RSLib::RSLStateMachine
{
public:
    std::vector<std::string> State()
    {
        std::lock_guard<std::mutex> hold(m_lock);
        return m_words;
    }
    size_t Executed()
    {
        std::lock_guard<std::mutex> hold(m_lock);
        return m_words.size();
    }
    std::atomic<bool> m_primary{false};

protected:
    bool LoadState(RSLib::RSLCheckpointStreamReader* reader) override
    {
        std::lock_guard<std::mutex> hold(m_lock);
        m_words.clear();
        if (reader == nullptr)
        {
            return true; // a new ring: empty state
        }
        std::string text(static_cast<size_t>(reader->Size()), '\0');
        unsigned long read = 0;
        if (reader->GetData(&text[0], static_cast<unsigned long>(text.size()), &read) != 0 || read != text.size())
        {
            return false;
        }
        for (size_t at = 0, end; (end = text.find('\n', at)) != std::string::npos; at = end + 1)
        {
            m_words.push_back(text.substr(at, end - at));
        }
        return true;
    }

    void ExecuteReplicatedRequest(void* request, size_t len, void*, bool*) override
    {
        std::lock_guard<std::mutex> hold(m_lock);
        m_words.emplace_back(static_cast<const char*>(request), len);
    }

    void SaveState(RSLib::RSLCheckpointStreamWriter* writer) override
    {
        std::string text;
        for (const std::string& w : State())
        {
            text += w + "\n";
        }
        writer->Write(text.data(), static_cast<unsigned long>(text.size()));
    }

    void NotifyStatus(bool isPrimary) override { m_primary = isPrimary; }
    void ExecuteFastReadRequest(void*, size_t, void*) override {}
    void AbortRequest(RSLib::RSLResponseCode status, void*) override
    {
        std::fprintf(stderr, "ring: a request was aborted (status %d)\n", static_cast<int>(status));
    }
    void NotifyConfigurationChanged(void*) override {}
    void AbortChangeConfiguration(RSLib::RSLResponseCode, void*) override {}
    void ShutDown(RSLib::RSLResponseCode) override {}

private:
    std::mutex m_lock;
    std::vector<std::string> m_words;
};

// Six ports from the OS (Paxos and learn port of each member): all are held until all are
// picked, so they differ; the replicas bind them right after.
std::vector<unsigned short> PickPorts()
{
    std::vector<int> fds;
    std::vector<unsigned short> ports;
    for (int i = 0; i < 6; ++i)
    {
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof a;
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
            getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0)
        {
            std::perror("ring: picking a port");
            std::exit(1);
        }
        fds.push_back(fd);
        ports.push_back(ntohs(a.sin_port));
    }
    for (int fd : fds)
    {
        close(fd);
    }
    return ports;
}

// Waits up to kDeadline for `done`, checking every 10 ms.
bool WaitFor(const std::function<bool()>& done)
{
    const auto until = std::chrono::steady_clock::now() + kDeadline;
    while (!done())
    {
        if (std::chrono::steady_clock::now() > until)
        {
            return false;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return true;
}

int Fail(const char* what)
{
    std::fprintf(stderr, "ring: %s failed\n", what);
    return 1;
}
} // namespace

int main(int argc, char** argv)
{
    char dir[256] = "/tmp/rsl-cpp-ring-XXXXXX";
    if (argc > 1)
    {
        std::snprintf(dir, sizeof dir, "%s", argv[1]);
    }
    else if (mkdtemp(dir) == nullptr)
    {
        return Fail("mkdtemp");
    }
    std::printf("rsl %d.%d.%d, files in %s\n", RSL_VERSION_MAJOR, RSL_VERSION_MINOR, RSL_VERSION_PATCH, dir);
    if (!RSLib::RSLInit(nullptr))
    {
        return Fail("RSLInit");
    }

    const std::vector<unsigned short> ports = PickPorts();
    RSLib::RSLNodeCollection members;
    std::vector<RSLib::RSLNode> nodes(3);
    for (size_t i = 0; i < nodes.size(); ++i)
    {
        nodes[i].SetMemberIdAsUInt64(i + 1);
        nodes[i].m_ip = inet_addr("127.0.0.1");
        nodes[i].m_rslPort = ports[2 * i];
        nodes[i].m_rslLearnPort = ports[2 * i + 1];
        members.Append(nodes[i]);
    }
    RSLib::RSLConfigParam cfg;
    std::snprintf(cfg.m_workingDir, sizeof cfg.m_workingDir, "%s", dir);
    cfg.m_heartBeatIntervalSec = 1; // short timers: a local ring elects in a few seconds
    cfg.m_electionDelaySec = 3;
    cfg.m_newLeaderGracePeriodSec = 1;

    std::vector<std::unique_ptr<Words>> ring;
    for (const RSLib::RSLNode& me : nodes)
    {
        ring.push_back(std::make_unique<Words>());
        if (!ring.back()->Initialize(&cfg, members, me, RSLib::RSLProtocolVersion_6, true))
        {
            return Fail("Initialize");
        }
    }

    int primary = -1;
    auto findPrimary = [&] {
        for (size_t i = 0; i < ring.size(); ++i)
        {
            if (ring[i]->m_primary)
            {
                primary = static_cast<int>(i);
            }
        }
        return primary >= 0;
    };
    if (!WaitFor(findPrimary))
    {
        return Fail("electing a primary");
    }
    std::printf("replica %d is primary\n", primary + 1);
    for (std::string request : kRequests)
    {
        if (ring[primary]->ReplicateRequest(&request[0], request.size(), nullptr) != RSLib::RSLSuccess)
        {
            return Fail("ReplicateRequest");
        }
    }
    auto allExecuted = [&] {
        for (auto& m : ring)
        {
            if (m->Executed() < kRequests.size())
            {
                return false;
            }
        }
        return true;
    };
    if (!WaitFor(allExecuted))
    {
        return Fail("executing the requests everywhere");
    }

    for (size_t i = 0; i < ring.size(); ++i)
    {
        std::string state;
        for (const std::string& w : ring[i]->State())
        {
            state += (state.empty() ? "" : ", ") + w;
        }
        std::printf("replica %zu (%s): state [%s]\n", i + 1, ring[i]->m_primary ? "primary" : "secondary", state.c_str());
    }
    for (auto& m : ring)
    {
        m->UnloadThisOne();
    }
    return 0;
}
