// A replicated key-value service written the way services use the original RSLib API:
// one replica per process. compat-tests/tests/cpp_cluster.rs builds it with
// `g++ -Wall -Werror $(pkg-config --cflags --libs rsl)` and runs three of them.
//
//   kv_service run     <id> <basePort> <dataRoot> <outDir>
//   kv_service restart <id> <basePort> <dataRoot> <outDir>
//
// run: Initialize (v4 form) and Bootstrap the members "1", "2", "3" on 127.0.0.1 ports
// basePort, basePort+10, basePort+20 (with RSL_KV_LEGACY_INIT=1: the legacy Initialize that
// takes the initial members). Whichever replica is primary drives the workload,
// deciding what is left from the replicated state, so a new primary carries on:
//   1. set k1..k10 (ten requests submitted together);
//   2. a fast read of k5;
//   3. ChangeConfiguration to the same three members with the configuration cookie "v2";
//   4. set k11..k20 (k20 asks for a checkpoint), then b1..b3 (400 KB each: the log rolls at
//      1 MB and the secondaries save a checkpoint, written to <outDir>/saved.<id>);
//   5. "done".
// Each replica writes <outDir>/done.<id> once it has executed "done", then waits for its
// standard input to close, unloads, and writes <outDir>/callbacks.<id>.log (one line per
// callback) and <outDir>/state.<id>.txt.
//
// restart: Initialize from the data directory (LoadState gets the checkpoint, the log
// replays the rest), write <outDir>/restart-callbacks.<id>.log and restart-state.<id>.txt, unload;
// then read the same directory with Replay and write replay-callbacks.<id>.log and replay-state.<id>.txt.
//
// With RSL_KV_TLS_THUMBS="A,B" the replicas speak mutual TLS, set up with SetThumbprintsForSsl
// (validateCAChain): each finds its certificate by thumbprint in $RSL_TLS_DIR, which also holds
// ca.crt. Replica 3 presents B and the others A (a ring midway through a rotation); each admits both.
// With RSL_KV_TLS_ISSUER=<CA thumbprint> too, replica 3 admits its peers by subject and issuer
// instead: SetSubjectNamesForSsl("kv-service-a", issuer, "kv-service-b", issuer, false).

#include <arpa/inet.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "rsl.h"

using namespace RSLib;

namespace
{
    const int kMembers = 3;
    // Health detail: each replica sets this plus its id as its vote payload.
    const unsigned long long kVotePayloadBase = 1000;
    const int kFirstBatch = 10;
    const int kLastKey = 20;
    // Requests kLastKey+1..kLastBlob write 400 KB values: together they pass the 1 MB log
    // size, and the log roll makes the secondaries save a checkpoint.
    const int kLastBlob = kLastKey + 3;
    const size_t kBlobSize = 400 * 1000;

    std::string KeyName(int i)
    {
        return i <= kLastKey ? "k" + std::to_string(i) : "b" + std::to_string(i - kLastKey);
    }

    std::string Request(int i)
    {
        if (i == 0)
        {
            return "done";
        }
        if (i <= kLastKey)
        {
            return "set " + KeyName(i) + " v" + std::to_string(i);
        }
        return "set " + KeyName(i) + " " + std::string(kBlobSize, static_cast<char>('a' + i - kLastKey));
    }

    // Request cookies: owned by RSL between a successful submit and the callback
    // (ExecuteReplicatedRequest, ExecuteFastReadRequest or AbortRequest) that hands them back.
    struct Cookie
    {
        virtual ~Cookie() = default;
    };

    struct RequestCookie : Cookie
    {
        explicit RequestCookie(int k) : key(k) {}
        int key; // 1..kLastBlob, or 0 for "done"
    };

    struct ReadCookie : Cookie
    {
        explicit ReadCookie(const std::string& k) : key(k) {}
        std::string key;
    };

    struct ConfigCookie
    {
        unsigned int target;
    };

    RSLNode MakeNode(int id, unsigned short basePort)
    {
        RSLNode node;
        node.SetMemberIdAsUInt64(static_cast<unsigned long long>(id));
        std::snprintf(node.m_hostName, sizeof node.m_hostName, "localhost");
        node.m_ip = inet_addr("127.0.0.1");
        node.m_rslPort = static_cast<unsigned short>(basePort + 10 * (id - 1));
        return node;
    }

    void PutU32(std::string& out, unsigned int v)
    {
        for (int i = 0; i < 4; ++i)
        {
            out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
        }
    }

    bool GetU32(const std::string& in, size_t* at, unsigned int* v)
    {
        if (*at + 4 > in.size())
        {
            return false;
        }
        *v = 0;
        for (int i = 0; i < 4; ++i)
        {
            *v |= static_cast<unsigned int>(static_cast<unsigned char>(in[*at + i])) << (8 * i);
        }
        *at += 4;
        return true;
    }
} // namespace

class KvStateMachine : public RSLStateMachine
{
public:
    KvStateMachine(int id, unsigned short basePort, const std::string& outDir, bool legacy = false)
        : m_id(id), m_basePort(basePort), m_outDir(outDir), m_legacy(legacy), m_isPrimary(false), m_recovered(false),
          m_done(false), m_shutDown(false), m_stop(false)
    {
    }

    // ---- the service's own API ------------------------------------------------------

    bool Start(const std::string& dataRoot, bool bootstrap)
    {
        RSLConfigParam cfg;
        cfg.m_newLeaderGracePeriodSec = 2;
        cfg.m_heartBeatIntervalSec = 1;
        cfg.m_electionDelaySec = 2;
        cfg.m_maxElectionRandomizeSec = 1;
        cfg.m_initializeRetryIntervalSec = 1;
        cfg.m_prepareRetryIntervalSec = 1;
        cfg.m_voteRetryIntervalSec = 1;
        cfg.m_fastReadSeqThreshold = 0;
        cfg.m_maxLogLenMB = 1;
        cfg.m_logLenRandomize = 0;
        std::snprintf(cfg.m_workingDir, sizeof cfg.m_workingDir, "%s", dataRoot.c_str());
        cfg.m_addMemberIdToWorkingDir = true;

        RSLNode self = MakeNode(m_id, m_basePort);
        RSLNodeCollection nodes;
        for (int i = 1; i <= kMembers; ++i)
        {
            nodes.Append(MakeNode(i, m_basePort));
        }
        if (m_legacy)
        {
            // The form for rings started before v4: the initial members are given here.
            if (!Initialize(&cfg, nodes, self, RSLProtocolVersion_6, false))
            {
                std::cerr << "replica " << m_id << ": Initialize (legacy) failed\n";
                return false;
            }
            return true;
        }
        if (!Initialize(&cfg, self, RSLProtocolVersion_6, false))
        {
            std::cerr << "replica " << m_id << ": Initialize failed\n";
            return false;
        }
        if (!bootstrap)
        {
            return true;
        }
        char cookie[] = "v1";
        RSLMemberSet members(nodes, cookie, 2);
        RSLResponseCode rc = Bootstrap(&members, 30);
        if (rc != RSLSuccess && rc != RSLAlreadyBootstrapped)
        {
            std::cerr << "replica " << m_id << ": Bootstrap returned " << rc << "\n";
            return false;
        }
        Record("Bootstrap " + std::to_string(static_cast<int>(rc)));
        return true;
    }

    // The primary's workload; runs on its own thread until "done" has executed here.
    void Drive()
    {
        std::unique_lock<std::mutex> lock(m_mutex);
        while (!m_done && !m_stop)
        {
            if (!m_isPrimary || !m_recovered)
            {
                m_cv.wait_for(lock, std::chrono::milliseconds(50));
                continue;
            }
            std::vector<int> submit;
            bool read = false, reconfigure = false;
            if (Applied(1, kFirstBatch) < kFirstBatch)
            {
                Missing(1, kFirstBatch, &submit);
            }
            else if (!m_fastReadDone)
            {
                read = !m_fastReadInFlight;
            }
            else if (m_configNumber < 2) // bootstrap made configuration 1
            {
                reconfigure = !m_configInFlight;
            }
            else if (Applied(kFirstBatch + 1, kLastKey) < kLastKey - kFirstBatch)
            {
                Missing(kFirstBatch + 1, kLastKey, &submit);
            }
            else if (Applied(kLastKey + 1, kLastBlob) < kLastBlob - kLastKey)
            {
                Missing(kLastKey + 1, kLastBlob, &submit);
            }
            else if (m_inFlight.count(0) == 0)
            {
                submit.push_back(0);
            }
            for (int key : submit)
            {
                m_inFlight.insert(key);
            }
            if (read)
            {
                m_fastReadInFlight = true;
            }
            if (reconfigure)
            {
                m_configInFlight = true;
            }
            lock.unlock();
            for (int key : submit)
            {
                std::string req = Request(key);
                Cookie* cookie = new RequestCookie(key);
                RSLResponseCode rc = ReplicateRequest(&req[0], req.size(), cookie);
                if (rc != RSLSuccess)
                {
                    delete cookie; // still ours: RSL took it only on success
                    std::lock_guard<std::mutex> g(m_mutex);
                    m_inFlight.erase(key);
                }
            }
            if (read)
            {
                RecordHealth();
                std::string req = "get k5";
                Cookie* cookie = new ReadCookie("k5");
                RSLResponseCode rc = FastReadRequest(GetCurrentSequenceNumber(), &req[0], req.size(), cookie, 1000);
                if (rc != RSLSuccess)
                {
                    delete cookie;
                    std::lock_guard<std::mutex> g(m_mutex);
                    m_fastReadInFlight = false;
                }
            }
            if (reconfigure)
            {
                RSLMemberSet current;
                unsigned int number = 0;
                GetConfiguration(&current, &number);
                RSLNodeCollection nodes;
                current.GetMemberCollection(nodes);
                char setCookie[] = "v2";
                RSLMemberSet next(nodes, setCookie, 2);
                ConfigCookie* cookie = new ConfigCookie{number + 1};
                RSLResponseCode rc = ChangeConfiguration(&next, cookie);
                Record("ChangeConfiguration " + std::to_string(static_cast<int>(rc)) + " members=" +
                       std::to_string(next.GetNumMembers()));
                if (rc != RSLSuccess)
                {
                    delete cookie;
                    std::lock_guard<std::mutex> g(m_mutex);
                    m_configInFlight = false;
                }
            }
            lock.lock();
            m_cv.wait_for(lock, std::chrono::milliseconds(50));
        }
        if (m_done)
        {
            lock.unlock();
            RecordHealthDetail();
        }
    }

    void Stop()
    {
        std::lock_guard<std::mutex> lock(m_mutex);
        m_stop = true;
        m_cv.notify_all();
    }

    void WriteFiles(const std::string& prefix)
    {
        std::lock_guard<std::mutex> lock(m_mutex);
        std::ofstream log(m_outDir + "/" + prefix + "callbacks." + std::to_string(m_id) + ".log");
        for (const std::string& line : m_log)
        {
            log << line << "\n";
        }
        std::ofstream state(m_outDir + "/" + prefix + "state." + std::to_string(m_id) + ".txt");
        for (const auto& kv : m_kv)
        {
            if (kv.second.size() > 64)
            {
                state << kv.first << "=#" << kv.second.size() << ":" << std::hex
                      << RSLUtils::CalculateChecksum(kv.second.data(), kv.second.size()) << std::dec << "\n";
            }
            else
            {
                state << kv.first << "=" << kv.second << "\n";
            }
        }
        state << "config=" << m_configNumber << "\n";
        state << m_configuration << "\n";
        state << "seq=" << GetCurrentSequenceNumber() << "\n";
        WriteSeqFold(prefix);
    }

    // Records what GetConfiguration reports (call before unloading); false while it reports
    // no configuration.
    bool CaptureConfiguration()
    {
        RSLMemberSet members;
        unsigned int number = 0;
        GetConfiguration(&members, &number);
        unsigned int cookieLen = 0;
        const char* setCookie = static_cast<const char*>(members.GetConfigurationCookie(&cookieLen));
        std::string ids;
        for (unsigned short i = 0; i < members.GetNumMembers(); ++i)
        {
            ids += (i ? "," : "") + std::string(members.GetMemberInfo(i)->m_memberIdString);
        }
        RSLNode primary;
        GetCurrentPrimary(&primary);
        std::ostringstream line;
        line << "primary=" << (primary.m_memberIdString[0] != '\0' ? "known" : "unknown") << "\n";
        line << "GetConfiguration=" << number << " members=" << ids << " setcookie="
             << (setCookie ? std::string(setCookie, cookieLen) : std::string()) << " includes3="
             << (members.IncludesMember("3") ? 1 : 0);
        std::lock_guard<std::mutex> lock(m_mutex);
        m_configuration = line.str();
        return number != 0;
    }

protected:
    // ---- RSLStateMachine callbacks ----------------------------------------------------

    bool LoadState(RSLCheckpointStreamReader* reader) override
    {
        std::lock_guard<std::mutex> lock(m_mutex);
        m_kv.clear();
        if (reader == NULL)
        {
            // Configuration 1 is announced by NotifyConfigurationChanged after Bootstrap; the
            // legacy Initialize starts in it.
            m_configNumber = m_legacy ? 1 : 0;
            m_seqFold = 0;
            Record("LoadState null");
            return true;
        }
        std::string blob;
        const unsigned long long size = reader->Size();
        while (blob.size() < size)
        {
            void* data = NULL;
            unsigned long read = 0;
            unsigned int ec = reader->GetDataPointer(&data, 64 * 1024, &read);
            if (ec != NO_ERROR || read == 0)
            {
                Record("LoadState error " + std::to_string(ec));
                return false;
            }
            blob.append(static_cast<const char*>(data), read);
        }
        // Reading past the end reports ERROR_HANDLE_EOF, through the DWORD overload.
        char extra = 0;
        DWORD extraRead = 0;
        const unsigned int eof = reader->GetData(&extra, 1, &extraRead);
        if (blob.size() < 8)
        {
            return false;
        }
        const std::string body = blob.substr(0, blob.size() - 8);
        unsigned long long stored = 0;
        std::memcpy(&stored, blob.data() + body.size(), 8);
        if (stored != RSLUtils::CalculateChecksum(body.data(), body.size()))
        {
            Record("LoadState bad checksum");
            return false;
        }
        size_t at = 0;
        unsigned int count = 0, configNumber = 0;
        if (!GetU32(body, &at, &configNumber) || !GetU32(body, &at, &count))
        {
            return false;
        }
        for (unsigned int i = 0; i < count; ++i)
        {
            unsigned int klen = 0, vlen = 0;
            if (!GetU32(body, &at, &klen) || at + klen > body.size())
            {
                return false;
            }
            std::string k = body.substr(at, klen);
            at += klen;
            if (!GetU32(body, &at, &vlen) || at + vlen > body.size())
            {
                return false;
            }
            m_kv[k] = body.substr(at, vlen);
            at += vlen;
        }
        m_configNumber = configNumber;
        LoadSeqFold(body, at);
        Record("LoadState size=" + std::to_string(size) + " keys=" + std::to_string(m_kv.size()) +
               " eof=" + std::to_string(eof == ERROR_HANDLE_EOF ? 1 : 0));
        return true;
    }

    void BeforeExecuteReplicatedRequests() override
    {
        std::lock_guard<std::mutex> lock(m_mutex);
        Record("Before");
    }

    void AfterExecuteReplicatedRequests() override
    {
        std::lock_guard<std::mutex> lock(m_mutex);
        Record("After");
    }

    void ExecuteReplicatedRequest(void* request, size_t len, void* cookie, bool* saveState) override
    {
        std::unique_ptr<RequestCookie> mine(static_cast<RequestCookie*>(static_cast<Cookie*>(cookie)));
        std::lock_guard<std::mutex> lock(m_mutex);
        const std::string req(static_cast<const char*>(request), len);
        std::istringstream in(req);
        std::string op, key, value;
        in >> op >> key >> value;
        if (op == "set")
        {
            m_kv[key] = value;
            if (key == "k" + std::to_string(kLastKey))
            {
                *saveState = true;
            }
        }
        else if (op == "done")
        {
            m_done = true;
            std::ofstream(m_outDir + "/done." + std::to_string(m_id)) << GetCurrentSequenceNumber() << "\n";
        }
        FoldSeq(req);
        if (mine)
        {
            m_inFlight.erase(mine->key);
        }
        Record("Execute " + (req.size() > 64 ? req.substr(0, 7) + "..." : req) + " cookie=" + (mine ? "1" : "0") + " seq=" + std::to_string(GetCurrentSequenceNumber()));
        m_cv.notify_all();
    }

    void ExecuteFastReadRequest(void* request, size_t len, void* cookie) override
    {
        std::unique_ptr<ReadCookie> mine(static_cast<ReadCookie*>(static_cast<Cookie*>(cookie)));
        std::lock_guard<std::mutex> lock(m_mutex);
        const std::string req(static_cast<const char*>(request), len);
        auto it = m_kv.find(mine ? mine->key : std::string());
        Record("FastRead " + req + " -> " + (it == m_kv.end() ? std::string("(none)") : it->second));
        m_fastReadDone = true;
        m_fastReadInFlight = false;
        m_cv.notify_all();
    }

    void AbortRequest(RSLResponseCode status, void* cookie) override
    {
        std::lock_guard<std::mutex> lock(m_mutex);
        Record("AbortRequest " + std::to_string(static_cast<int>(status)));
        // Fast reads and replicated requests share this callback.
        std::unique_ptr<Cookie> mine(static_cast<Cookie*>(cookie));
        if (RequestCookie* request = dynamic_cast<RequestCookie*>(mine.get()))
        {
            m_inFlight.erase(request->key);
        }
        else if (mine)
        {
            m_fastReadInFlight = false;
        }
        m_cv.notify_all();
    }

    void SaveState(RSLCheckpointStreamWriter* writer) override
    {
        std::string body;
        {
            std::lock_guard<std::mutex> lock(m_mutex);
            PutU32(body, m_configNumber);
            PutU32(body, static_cast<unsigned int>(m_kv.size()));
            for (const auto& kv : m_kv)
            {
                PutU32(body, static_cast<unsigned int>(kv.first.size()));
                body += kv.first;
                PutU32(body, static_cast<unsigned int>(kv.second.size()));
                body += kv.second;
            }
            SaveSeqFold(body);
            Record("SaveState seq=" + std::to_string(GetCurrentSequenceNumber()) + " keys=" + std::to_string(m_kv.size()));
        }
        const unsigned long long sum = RSLUtils::CalculateChecksum(body.data(), body.size());
        char tail[8];
        std::memcpy(tail, &sum, 8);
        // Two writes, to exercise the writer's buffering.
        writer->Write(body.data(), static_cast<unsigned long>(body.size()));
        writer->Write(tail, 8);
    }

    void NotifyStatus(bool isPrimary) override
    {
        std::lock_guard<std::mutex> lock(m_mutex);
        m_isPrimary = isPrimary;
        if (!isPrimary)
        {
            m_recovered = false;
        }
        Record(std::string("NotifyStatus ") + (isPrimary ? "1" : "0"));
        m_cv.notify_all();
    }

    void NotifyPrimaryRecovered() override
    {
        std::lock_guard<std::mutex> lock(m_mutex);
        m_recovered = true;
        Record("NotifyPrimaryRecovered");
        m_cv.notify_all();
    }

    void NotifyConfigurationChanged(void* cookie) override
    {
        ConfigCookie* mine = static_cast<ConfigCookie*>(cookie);
        std::lock_guard<std::mutex> lock(m_mutex);
        // The configuration number is part of the replicated state: bootstrap is the first.
        ++m_configNumber;
        Record("NotifyConfigurationChanged cookie=" + std::string(mine ? "1" : "0") + " config=" +
               std::to_string(m_configNumber));
        if (mine != NULL)
        {
            m_configInFlight = false;
            delete mine;
        }
        m_cv.notify_all();
    }

    void AbortChangeConfiguration(RSLResponseCode status, void* cookie) override
    {
        std::lock_guard<std::mutex> lock(m_mutex);
        Record("AbortChangeConfiguration " + std::to_string(static_cast<int>(status)));
        delete static_cast<ConfigCookie*>(cookie);
        m_configInFlight = false;
        m_cv.notify_all();
    }

    void ShutDown(RSLResponseCode status) override
    {
        std::lock_guard<std::mutex> lock(m_mutex);
        m_shutDown = true;
        Record("ShutDown " + std::to_string(static_cast<int>(status)));
        m_cv.notify_all();
    }

    bool CanBecomePrimary(RSLPrimaryCookie* cookie) override
    {
        char data[16];
        const int n = std::snprintf(data, sizeof data, "cand-%d", m_id);
        cookie->Set(data, static_cast<unsigned int>(n));
        return true;
    }

    bool AcceptMessageFromReplica(RSLNode* node, void* data, unsigned int len) override
    {
        // Every replica accepts every candidate; just check what arrives is well formed.
        if (node != NULL && node->m_memberIdString[0] == '\0')
        {
            return false;
        }
        return data != NULL || len == 0;
    }

    void StateSaved(unsigned long long seqNo, const char* fileName) override
    {
        std::lock_guard<std::mutex> lock(m_mutex);
        const std::string file = fileName ? fileName : "";
        const size_t slash = file.find_last_of('/');
        Record("StateSaved seq=" + std::to_string(seqNo) + " file=" + file.substr(slash == std::string::npos ? 0 : slash + 1));
        if (seqNo > 0)
        {
            std::ofstream(m_outDir + "/saved." + std::to_string(m_id)) << seqNo << "\n";
        }
    }

    void StateCopied(unsigned long long seqNo, const char* fileName, void* cookie) override
    {
        std::lock_guard<std::mutex> lock(m_mutex);
        Record("StateCopied seq=" + std::to_string(seqNo) + " file=" + (fileName ? "1" : "0") + " cookie=" +
               (cookie ? "1" : "0"));
    }

private:
    // ---- restore-time answers (issue 12, item 1) ---------------------------------------
    // The service folds what GetCurrentSequenceNumber and GetConfiguration report while each
    // request executes into a digest that is part of its state (saved in checkpoints after
    // the key-value pairs), as a service that stores sequence numbers does. A restarted
    // replica (LoadState, then the log replayed inside Initialize) must end with the digest
    // of the replicas that executed live. Each helper runs with m_mutex held.
    unsigned long long m_seqFold = 0;
    // What GetCurrentSequenceNumber and GetConfiguration reported inside LoadState, and what
    // they reported when that checkpoint was saved; empty unless a checkpoint was loaded.
    std::string m_seqFoldLoad;

    static unsigned long long Fnv(unsigned long long digest, const void* data, size_t len)
    {
        const unsigned char* p = static_cast<const unsigned char*>(data);
        for (size_t i = 0; i < len; ++i)
        {
            digest = (digest ^ p[i]) * 0x100000001b3ULL;
        }
        return digest;
    }

    // The sequence number, configuration number and member count the replica reports now.
    void SeqFoldView(unsigned long long* seq, unsigned int* number, unsigned short* members)
    {
        RSLMemberSet set;
        GetConfiguration(&set, number);
        *members = set.GetNumMembers();
        *seq = GetCurrentSequenceNumber();
    }

    void FoldSeq(const std::string& request)
    {
        unsigned long long seq = 0;
        unsigned int number = 0;
        unsigned short members = 0;
        SeqFoldView(&seq, &number, &members);
        m_seqFold = Fnv(m_seqFold, request.data(), request.size());
        m_seqFold = Fnv(m_seqFold, &seq, sizeof seq);
        m_seqFold = Fnv(m_seqFold, &number, sizeof number);
        m_seqFold = Fnv(m_seqFold, &members, sizeof members);
    }

    void SaveSeqFold(std::string& body)
    {
        unsigned long long seq = 0;
        unsigned int number = 0;
        unsigned short members = 0;
        SeqFoldView(&seq, &number, &members);
        body.append(reinterpret_cast<const char*>(&m_seqFold), 8);
        body.append(reinterpret_cast<const char*>(&seq), 8);
        PutU32(body, number);
    }

    void LoadSeqFold(const std::string& body, size_t at)
    {
        m_seqFold = 0;
        unsigned long long savedSeq = 0;
        unsigned int savedNumber = 0;
        if (at + 16 > body.size())
        {
            return;
        }
        std::memcpy(&m_seqFold, body.data() + at, 8);
        std::memcpy(&savedSeq, body.data() + at + 8, 8);
        at += 16;
        GetU32(body, &at, &savedNumber);
        unsigned long long seq = 0;
        unsigned int number = 0;
        unsigned short members = 0;
        SeqFoldView(&seq, &number, &members);
        m_seqFoldLoad = "load seq=" + std::to_string(seq) + " config=" + std::to_string(number) +
                        " saved seq=" + std::to_string(savedSeq) + " config=" + std::to_string(savedNumber);
    }

    // <outDir>/<prefix>seqfold.<id>.txt: the digest, and what LoadState saw.
    void WriteSeqFold(const std::string& prefix)
    {
        std::ofstream out(m_outDir + "/" + prefix + "seqfold." + std::to_string(m_id) + ".txt");
        out << "fold=" << std::hex << m_seqFold << std::dec << "\n";
        if (!m_seqFoldLoad.empty())
        {
            out << m_seqFoldLoad << "\n";
        }
    }

    // Call with m_mutex held.
    void Record(const std::string& line) { m_log.push_back(line); }

    // ---- health detail: every ReplicaHealth field and RSLStats counter ----------------
    // On the primary, once the workload is done: one "HealthDetail" line with each member's
    // fields (times as set=1/unset=0) and every statistics counter since the last snapshot.
    static int IsSet(const SYSTEMTIME& t) { return t.wYear >= 2020 && t.wMonth >= 1 && t.wMonth <= 12 ? 1 : 0; }

    static bool AllVoted(const ReplicaHealth (&health)[kMembers])
    {
        for (const ReplicaHealth& h : health)
        {
            if (h.m_memberId[0] != '\0' && h.m_lastRequestVotedDecree == 0)
            {
                return false;
            }
        }
        return true;
    }

    void RecordHealthDetail()
    {
        ReplicaHealth health[kMembers];
        unsigned short rc = GetReplicasInformation(kMembers, health);
        // A member that started late (a loaded machine, a sanitizer) may not have voted when
        // the workload ends; the primary's heartbeat decrees bring its vote within seconds.
        for (int i = 0; i < 300 && !AllVoted(health); ++i)
        {
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
            rc = GetReplicasInformation(kMembers, health);
        }
        std::string line = "HealthDetail rc=" + std::to_string(rc);
        for (const ReplicaHealth& h : health)
        {
            if (h.m_memberId[0] == '\0')
            {
                continue;
            }
            line += std::string(" member=") + h.m_memberId + ":primary=" + std::to_string(h.m_isPrimary ? 1 : 0) +
                    ",connected=" + std::to_string(h.m_connected ? 1 : 0) + ",payload=" + std::to_string(h.m_lastVotePayload) +
                    ",decree=" + std::to_string(h.m_lastRequestVotedDecree) + ",votedAt=" + std::to_string(IsSet(h.m_lastRequestVotedAt)) +
                    ",sentAt=" + std::to_string(IsSet(h.m_lastRequestSentAt)) + ",failedAt=" + std::to_string(IsSet(h.m_failedAt)) +
                    ",failures=" + std::to_string(h.m_consecutiveFailures) + ",outstanding=" + std::to_string(h.m_numOutstanding) +
                    ",needsResolve=" + std::to_string(h.m_needsResolve ? 1 : 0);
        }
        RSLStats s;
        s.m_cbSizeOfThisStruct = sizeof s;
        GetStatisticsSnapshot(&s);
        line += " stats=capture:" + std::to_string(s.m_cCaptureTimeInMicroseconds) + ",decrees:" + std::to_string(s.m_cDecreesExecuted) +
                ",logReads:" + std::to_string(s.m_cLogReads) + ",logReadBytes:" + std::to_string(s.m_cLogReadBytes) +
                ",logReadUs:" + std::to_string(s.m_cLogReadMicroseconds) + ",logReadMaxUs:" + std::to_string(s.m_cLogReadMaxMicroseconds) +
                ",logWrites:" + std::to_string(s.m_cLogWrites) + ",logWriteBytes:" + std::to_string(s.m_cLogWriteBytes) +
                ",logWriteUs:" + std::to_string(s.m_cLogWriteMicroseconds) + ",logWriteMaxUs:" + std::to_string(s.m_cLogWriteMaxMicroseconds) +
                ",votingUs:" + std::to_string(s.m_cVotingTimeMicroseconds) + ",votingMaxUs:" + std::to_string(s.m_cVotingTimeMaxMicroseconds);
        std::lock_guard<std::mutex> lock(m_mutex);
        Record(line);
    }

    // On the primary: the replicas' health and the statistics, as a monitoring loop would.
    void RecordHealth()
    {
        const unsigned short needed = GetReplicasInformation(0, NULL);
        std::vector<ReplicaHealth> health(needed);
        const unsigned short rc = GetReplicasInformation(needed, health.data());
        std::string line = "Health needed=" + std::to_string(needed) + " rc=" + std::to_string(rc);
        for (const ReplicaHealth& h : health)
        {
            line += std::string(" ") + h.m_memberId + (h.m_isPrimary ? "(primary)" : "");
        }
        ReplicaHealth one;
        std::snprintf(one.m_memberId, sizeof one.m_memberId, "%d", m_id);
        line += std::string(" self=") + (GetReplicaInformation(&one) && one.m_isPrimary ? "1" : "0");
        RSLStats stats;
        stats.m_cbSizeOfThisStruct = sizeof stats;
        GetStatisticsSnapshot(&stats);
        line += std::string(" decrees=") + (stats.m_cDecreesExecuted > 0 ? "1" : "0");
        std::lock_guard<std::mutex> lock(m_mutex);
        Record(line);
    }

    int Applied(int from, int to) const
    {
        int n = 0;
        for (int k = from; k <= to; ++k)
        {
            n += m_kv.count(KeyName(k)) ? 1 : 0;
        }
        return n;
    }

    void Missing(int from, int to, std::vector<int>* out) const
    {
        for (int k = from; k <= to; ++k)
        {
            if (!m_kv.count(KeyName(k)) && !m_inFlight.count(k))
            {
                out->push_back(k);
            }
        }
    }

    const int m_id;
    const unsigned short m_basePort;
    const std::string m_outDir;
    const bool m_legacy;

    std::mutex m_mutex;
    std::condition_variable m_cv;
    std::vector<std::string> m_log;
    std::map<std::string, std::string> m_kv;
    std::set<int> m_inFlight;
    unsigned int m_configNumber = 0;
    bool m_isPrimary;
    bool m_recovered;
    bool m_done;
    bool m_shutDown;
    bool m_fastReadDone = false;
    bool m_fastReadInFlight = false;
    bool m_configInFlight = false;
    std::string m_configuration; // what GetConfiguration said before unloading
    bool m_stop;
};

static void LogEntry(const char* /*file*/, const char* /*function*/, int /*line*/, int /*logId*/,
                     CallBackLogLevel level, const char* /*title*/, const char* fmt, va_list args)
{
    if (level >= CallBackLogLevel_Warning)
    {
        char buf[1024];
        std::vsnprintf(buf, sizeof buf, fmt, args);
        std::fprintf(stderr, "[rsl %d] %s\n", static_cast<int>(level), buf);
    }
}

// RSL_KV_TLS_THUMBS="A,B": SetThumbprintsForSsl, replica 3 with the two swapped. A malformed
// thumbprint must be refused first.
bool SetUpTls(int id)
{
    const char* thumbs = std::getenv("RSL_KV_TLS_THUMBS");
    if (thumbs == NULL)
    {
        return true;
    }
    if (SetThumbprintsForSsl("not a thumbprint", NULL, true, false))
    {
        std::cerr << "SetThumbprintsForSsl accepted a malformed thumbprint\n";
        return false;
    }
    std::string a = thumbs;
    const std::string::size_type comma = a.find(',');
    std::string b = comma == std::string::npos ? std::string() : a.substr(comma + 1);
    a = a.substr(0, comma);
    if (id == 3)
    {
        std::swap(a, b);
    }
    if (!SetThumbprintsForSsl(a.c_str(), b.empty() ? NULL : b.c_str(), true, false))
    {
        std::cerr << "SetThumbprintsForSsl failed\n";
        return false;
    }
    const char* issuer = std::getenv("RSL_KV_TLS_ISSUER");
    if (issuer != NULL && id == 3 && !SetSubjectNamesForSsl("kv-service-a", issuer, "CN=kv-service-b", issuer, false))
    {
        std::cerr << "SetSubjectNamesForSsl failed\n";
        return false;
    }
    return true;
}

int main(int argc, char** argv)
{
    if (argc != 6)
    {
        std::cerr << "usage: kv_service run|restart <id> <basePort> <dataRoot> <outDir>\n";
        return 2;
    }
    const std::string mode = argv[1];
    const int id = std::atoi(argv[2]);
    const unsigned short basePort = static_cast<unsigned short>(std::atoi(argv[3]));
    const std::string dataRoot = argv[4];
    const std::string outDir = argv[5];

    if (!RSLInit(NULL, false, NULL, LogEntry))
    {
        std::cerr << "RSLInit failed\n";
        return 1;
    }
    if (!SetUpTls(id))
    {
        return 1;
    }
    int rc = 0;
    {
        // RSL_KV_LEGACY_INIT=1: start with the legacy Initialize (initial member list) instead
        // of the v4 form and Bootstrap.
        const char* legacy = std::getenv("RSL_KV_LEGACY_INIT");
        KvStateMachine sm(id, basePort, outDir, legacy != NULL && std::strcmp(legacy, "1") == 0);
        if (mode == "restart")
        {
            if (!sm.Start(dataRoot, false))
            {
                return 1;
            }
            // The configuration restored from disk is reported once the replica has started.
            for (int i = 0; i < 500 && !sm.CaptureConfiguration(); ++i)
            {
                std::this_thread::sleep_for(std::chrono::milliseconds(10));
            }
            sm.UnloadThisOne();
            sm.WriteFiles("restart-");

            // The same directory read back with the read-only Replay.
            KvStateMachine replayer(id, basePort, outDir);
            const std::string dir = dataRoot + "/" + std::to_string(id);
            if (!replayer.Replay(dir.c_str(), ~0ULL))
            {
                std::cerr << "replica " << id << ": Replay failed\n";
                return 1;
            }
            replayer.WriteFiles("replay-");
        }
        else
        {
            if (!sm.Start(dataRoot, true))
            {
                return 1;
            }
            sm.SetVotePayload(kVotePayloadBase + id); // health detail: seen at the primary
            std::thread driver([&sm] { sm.Drive(); });
            // Run until the harness closes standard input.
            std::string line;
            while (std::getline(std::cin, line))
            {
            }
            sm.Stop();
            driver.join();
            sm.CaptureConfiguration();
            RSLStateMachine::Unload();
            sm.WriteFiles("");
        }
    }
    RSLUnload();
    return rc;
}
