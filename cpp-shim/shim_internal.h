// Internal to the C++ shim: the callback trampolines and the conversions between the
// RSLib value classes and the C ABI's structs. Not installed; services never see it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "rsl.h"
#include "rsl_ffi.h"

// shim::LogAt and shim::FatalAt with the calling site.
#define SHIM_LOG(level, ...) ::RSLib::shim::LogAt(__FILE__, __func__, __LINE__, level, __VA_ARGS__)
#define SHIM_FATAL(...) ::RSLib::shim::FatalAt(__FILE__, __func__, __LINE__, __VA_ARGS__)

namespace RSLibImpl
{
    // Owns a header read from a checkpoint file through the C ABI.
    class __attribute__((visibility("hidden"))) CheckpointHeader
    {
    public:
        explicit CheckpointHeader(::rsl_checkpoint_header* header) : m_header(header) {}
        ~CheckpointHeader() { rsl_checkpoint_header_free(m_header); }
        CheckpointHeader(const CheckpointHeader&) = delete;
        CheckpointHeader& operator=(const CheckpointHeader&) = delete;

        ::rsl_checkpoint_header* m_header;
    };
} // namespace RSLibImpl

namespace RSLib
{
    // The C callbacks handed to rsl-ffi. `ctx` is the RSLStateMachine* (or, for
    // WriteCheckpointState, the IRSLCheckpointCreator*). Every one is noexcept: an exception
    // escaping a callback must not unwind into the Rust frames below, so it terminates.
    struct RSLStateMachineCallbacks
    {
        static rsl_callbacks Table(RSLStateMachine* sm) noexcept;
        // The state machine behind a callback context; NULL once its destructor has begun.
        static RSLStateMachine* Machine(void* ctx) noexcept;

        // RSLStateMachine::Initialize, all three forms (`members` NULL: the v4 form).
        static bool Initialize(RSLStateMachine* sm, RSLConfigParam* cfg, const std::vector<RSLNode>* members,
                               const RSLNode& self, RSLProtocolVersion version, bool serializeFastReadsWithReplicates,
                               SpawnRoutine spawnRoutine, bool independentHeartbeat);
        // The nodes as the C ABI takes them, after ResolveNode for each one without an address.
        static std::vector<rsl_node> ResolveAll(RSLStateMachine* sm, const std::vector<RSLNode>& nodes);

        static bool LoadState(void* ctx, rsl_checkpoint_reader* reader) noexcept;
        static void ExecuteReplicatedRequest(void* ctx, const void* request, size_t len, void* cookie,
                                             bool* saveState) noexcept;
        static void ExecuteFastReadRequest(void* ctx, const void* request, size_t len, void* cookie) noexcept;
        static void AbortRequest(void* ctx, rsl_status status, void* cookie) noexcept;
        static void SaveState(void* ctx, rsl_checkpoint_writer* writer) noexcept;
        static void NotifyStatus(void* ctx, bool isPrimary) noexcept;
        static void NotifyConfigurationChanged(void* ctx, void* cookie) noexcept;
        static void AbortChangeConfiguration(void* ctx, rsl_status status, void* cookie) noexcept;
        static void ShutDown(void* ctx, rsl_status status) noexcept;
        static void BeforeExecuteReplicatedRequests(void* ctx) noexcept;
        static void AfterExecuteReplicatedRequests(void* ctx) noexcept;
        static bool TrySaveState(void* ctx, rsl_checkpoint_writer* writer) noexcept;
        static void NotifyPrimaryRecovered(void* ctx) noexcept;
        static void StateSaved(void* ctx, uint64_t seq, const char* file) noexcept;
        static void StateCopied(void* ctx, uint64_t seq, const char* file, void* cookie) noexcept;
        static bool CanBecomePrimary(void* ctx, void* cookieBuf, uint32_t* cookieLen) noexcept;
        static bool AcceptMessageFromReplica(void* ctx, const rsl_node* node, const void* data,
                                             uint32_t len) noexcept;
        static bool ResolveNode(void* ctx, rsl_node* node) noexcept;

        // RSLCheckpointUtility::SaveCheckpoint's writer callback.
        static void WriteCheckpointState(void* ctx, rsl_checkpoint_writer* writer) noexcept;

        // Lets the utility code reach RSLMemberSet's and RSLNode's insides.
        static const std::vector<RSLNode>& Nodes(const RSLMemberSet& set);
        static void Assign(RSLMemberSet& set, const std::vector<RSLNode>& nodes, const void* cookie,
                           uint32_t cookieLen);
    };

    namespace shim
    {
        // Logs through RSLInit's callbacks (or stderr when none is installed), with the
        // caller's file, function and line (SHIM_LOG).
        void LogAt(const char* file, const char* function, int line, CallBackLogLevel level, const char* fmt, ...)
            __attribute__((format(printf, 5, 6)));
        // RSL's notification of a failed Initialize: `title` is RSL's (logged too), `cause`
        // (may be NULL) what went wrong, passed as the notification's message; made whether
        // or not a LogEntryCallback is installed.
        void NotifyInitializeFailure(const char* title, const char* cause);
        // Logs at Assert level and aborts the process (the original's fail-fast asserts).
        [[noreturn]] void FatalAt(const char* file, const char* function, int line, const char* fmt, ...)
            __attribute__((format(printf, 4, 5)));

        rsl_node ToNode(const RSLNode& node);
        RSLNode FromNode(const rsl_node& node);
        std::vector<rsl_node> ToNodes(const std::vector<RSLNode>& nodes);

        // A member set as the C ABI takes it.
        struct CMemberSet
        {
            std::vector<rsl_node> nodes;
            const void* cookie = nullptr;
            uint32_t cookieLen = 0;
        };
        CMemberSet ToCMemberSet(const RSLMemberSet& set);

        // Reads a member set through a C call that reports the node count it needs.
        template <typename Call>
        rsl_status ReadMemberSet(RSLMemberSet* out, Call call)
        {
            std::vector<rsl_node> nodes(8);
            std::vector<unsigned char> cookie(RSLMemberSet::s_MaxMemberSetCookieLength);
            for (int attempt = 0; attempt < 4; ++attempt)
            {
                size_t count = 0;
                uint32_t cookieLen = static_cast<uint32_t>(cookie.size());
                rsl_status st = call(nodes.data(), nodes.size(), &count, cookie.data(), &cookieLen);
                if (st == RSL_E_BUFFER && count > nodes.size())
                {
                    nodes.resize(count);
                    continue;
                }
                if (st != RSL_SUCCESS)
                {
                    return st;
                }
                std::vector<RSLNode> out_nodes;
                out_nodes.reserve(count);
                for (size_t i = 0; i < count && i < nodes.size(); ++i)
                {
                    out_nodes.push_back(FromNode(nodes[i]));
                }
                if (cookieLen > cookie.size())
                {
                    cookieLen = static_cast<uint32_t>(cookie.size());
                }
                RSLStateMachineCallbacks::Assign(*out, out_nodes, cookie.data(), cookieLen);
                return RSL_SUCCESS;
            }
            return RSL_E_BUFFER;
        }
    } // namespace shim
} // namespace RSLib
