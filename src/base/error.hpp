#pragma once
// The error model of mics. Every layer throws a mics::Error (or its layer's subclass) that
// carries what failed, where, which peer when one is involved, and what the user can do.
// Errors travel up as exceptions; only the outermost binary (tools/main.cpp) turns them into
// a message and an exit status. Nothing below the tools calls abort() or exit().
#include <optional>
#include <stdexcept>
#include <string>

namespace mics {

enum class ErrorKind {
  kInvalidArgument,  // the caller passed something that cannot work (flag, count, layout)
  kConfig,           // the environment or the job's configuration is wrong or inconsistent
  kUnavailable,      // a provider, device, file or service that is needed is not there
  kTimeout,          // a deadline passed (MICS_TIMEOUT_S)
  kPeerFailure,      // another rank died, disconnected or reported an error
  kProtocol,         // a message that does not follow the protocol (garbled, wrong token)
  kIo,               // a system call on a file or socket failed
  kInternal,         // a bug in mics: an invariant did not hold
};

const char* to_string(ErrorKind kind);

struct ErrorContext {
  std::string layer;        // "fabric", "comm", "bootstrap", ...
  std::string where;        // operation and object, e.g. "all_gather on comm 'world'"
  std::optional<int> peer;  // global rank of the peer involved, if any
  std::string hint;         // what to do about it
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, std::string message, ErrorContext context);

  ErrorKind kind() const { return kind_; }
  const std::string& message() const { return message_; }
  const ErrorContext& context() const { return context_; }

 private:
  ErrorKind kind_;
  std::string message_;
  ErrorContext context_;
};

// Throws an Error for a broken invariant, with the source location: these are mics bugs.
[[noreturn]] void throw_internal(const char* condition, const char* file, int line,
                                 const std::string& detail);

#define MICS_CHECK(cond, detail)                                              \
  do {                                                                        \
    if (!(cond)) ::mics::throw_internal(#cond, __FILE__, __LINE__, (detail)); \
  } while (0)

// errno as text, for system call failures.
std::string errno_text(int err);

}  // namespace mics
