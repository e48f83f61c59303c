// Failures that name their cause, through include/rsl.h. compat-tests/tests/cpp_cluster.rs
// builds it like stubs_check and runs
//
//   errors_check <basePort> <workDir>
//
// in one process, with a NotificationsCallback and a LogEntryCallback installed:
//   1. Initialize on a working directory below a regular file returns false, as RSL does when
//      it cannot restore its state; the notification keeps RSL's title ("Failed to restore
//      state") and carries the cause, naming the directory, as its message; the error logged
//      names it too.
//   2. RSLCheckpointUtility::ChangeReplicaSet on a missing checkpoint returns false and logs
//      why, naming the file.
//   3. Initialize with a value the shim cannot convert (a negative m_maxCheckpointIntervalSec)
//      returns false; the notification keeps RSL's title ("Could not load config") and names
//      the field as its message.
// Prints "ok <step>" per step and "all ok"; exits 1 at the first failure.

#include <cstdarg>
#include <mutex>

#include "check_support.h"
#include "rslutil.h"

using namespace RSLib;

namespace
{
    std::mutex g_mutex;
    std::vector<std::pair<std::string, std::string>> g_notifications; // title, message
    std::vector<std::string> g_errors;

    void OnNotification(int /*level*/, int /*logId*/, const char* title, const char* message)
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        g_notifications.emplace_back(title != nullptr ? title : "", message != nullptr ? message : "");
    }

    void OnLogEntry(const char* /*file*/, const char* /*function*/, int /*line*/, int /*logId*/, CallBackLogLevel level,
                    const char* /*title*/, const char* fmt, va_list args)
    {
        char buf[4096];
        std::vsnprintf(buf, sizeof buf, fmt, args);
        std::lock_guard<std::mutex> lock(g_mutex);
        if (level == CallBackLogLevel_Error)
        {
            g_errors.push_back(buf);
        }
    }

    // Whether an error logged since `from` contains both `a` and `b`.
    bool ErrorLogged(size_t from, const std::string& a, const std::string& b)
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        for (size_t i = from; i < g_errors.size(); ++i)
        {
            if (g_errors[i].find(a) != std::string::npos && g_errors[i].find(b) != std::string::npos)
            {
                return true;
            }
        }
        return false;
    }

    size_t ErrorCount()
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        return g_errors.size();
    }

    class Machine : public CheckMachine
    {
    public:
        void ExecuteReplicatedRequest(void*, size_t, void*, bool*) override {}
    };

    void InitializeOnABadDirectory()
    {
        const std::string file = g_work + "/a-file";
        std::ofstream(file) << "not a directory";
        const std::string dir = file + "/data";
        RSLConfigParam cfg = RingConfig(dir, 2, 2);
        RSLNodeCollection nodes = RingNodes({1});
        const size_t errors = ErrorCount();
        Machine m;
        Check(!m.Initialize(&cfg, nodes, MakeNode(1), RSLProtocolVersion_6, false), "Initialize fails");
        std::lock_guard<std::mutex> lock(g_mutex);
        Check(g_notifications.size() == 1, "one notification");
        const auto& [title, message] = g_notifications[0];
        Check(title == "Failed to restore state", "RSL's title, not '" + title + "'");
        Check(message.find(file) != std::string::npos, "the message names " + file + ": '" + message + "'");
        bool logged = false;
        for (size_t i = errors; i < g_errors.size(); ++i)
        {
            logged |= g_errors[i].find("Initialize failed (status") != std::string::npos &&
                      g_errors[i].find(file) != std::string::npos;
        }
        Check(logged, "the error logged names " + file);
        std::cout << "ok Initialize names the cause: " << message << std::endl;
    }

    void ChangeReplicaSetOfAMissingCheckpoint()
    {
        const std::string missing = g_work + "/missing.codex";
        RSLMemberSet set(RingNodes({1}), nullptr, 0);
        const size_t errors = ErrorCount();
        Check(!RSLCheckpointUtility::ChangeReplicaSet(missing.c_str(), &set), "ChangeReplicaSet fails");
        Check(ErrorLogged(errors, "ChangeReplicaSet", missing + ": "), "the error logged names the file and why");
        std::cout << "ok ChangeReplicaSet names the cause" << std::endl;
    }

    void InitializeWithAFieldOutOfRange()
    {
        RSLConfigParam cfg = RingConfig(g_work + "/config", 2, 2);
        cfg.m_maxCheckpointIntervalSec = -1;
        const size_t before = [] {
            std::lock_guard<std::mutex> lock(g_mutex);
            return g_notifications.size();
        }();
        Machine m;
        Check(!m.Initialize(&cfg, RingNodes({1}), MakeNode(1), RSLProtocolVersion_6, false), "Initialize fails");
        std::lock_guard<std::mutex> lock(g_mutex);
        Check(g_notifications.size() == before + 1, "one notification");
        const auto& [title, message] = g_notifications.back();
        Check(title == "Could not load config", "RSL's title, not '" + title + "'");
        Check(message.find("m_maxCheckpointIntervalSec = -1") != std::string::npos, "the message names the field: '" + message + "'");
        std::cout << "ok a bad field is named: " << message << std::endl;
    }
} // namespace

int main(int argc, char** argv)
{
    if (!ReadArgs(argc, argv, "errors_check"))
    {
        return 2;
    }
    g_failPrintsLogTail = true;
    if (!RSLInit((g_work + "/logs").c_str(), false, OnNotification, OnLogEntry))
    {
        Fail("RSLInit");
    }
    InitializeOnABadDirectory();
    ChangeReplicaSetOfAMissingCheckpoint();
    InitializeWithAFieldOutOfRange();
    std::cout << "all ok" << std::endl;
    return 0;
}
