#include "base/error.hpp"

#include <cstring>

#include <fmt/format.h>

namespace mics {

const char* to_string(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kInvalidArgument:
      return "invalid argument";
    case ErrorKind::kConfig:
      return "configuration error";
    case ErrorKind::kUnavailable:
      return "unavailable";
    case ErrorKind::kTimeout:
      return "timeout";
    case ErrorKind::kPeerFailure:
      return "peer failure";
    case ErrorKind::kProtocol:
      return "protocol error";
    case ErrorKind::kIo:
      return "I/O error";
    case ErrorKind::kInternal:
      return "internal error";
  }
  return "error";
}

static std::string format_error(ErrorKind kind, const std::string& message,
                                const ErrorContext& ctx) {
  std::string text =
      fmt::format("[{}] {}: {}", ctx.layer.empty() ? "mics" : ctx.layer, to_string(kind), message);
  if (!ctx.where.empty()) text += fmt::format(" (in {})", ctx.where);
  if (ctx.peer) text += fmt::format(" [peer rank {}]", *ctx.peer);
  if (!ctx.hint.empty()) text += fmt::format(". {}", ctx.hint);
  return text;
}

Error::Error(ErrorKind kind, std::string message, ErrorContext context)
    : std::runtime_error(format_error(kind, message, context)),
      kind_(kind),
      message_(std::move(message)),
      context_(std::move(context)) {}

void throw_internal(const char* condition, const char* file, int line, const std::string& detail) {
  throw Error(ErrorKind::kInternal, fmt::format("check '{}' failed: {}", condition, detail),
              {.layer = "mics",
               .where = fmt::format("{}:{}", file, line),
               .hint = "this is a bug in mics; please report it with the command line"});
}

std::string errno_text(int err) {
  char buf[256];
  // GNU strerror_r returns the message pointer.
  const char* text = strerror_r(err, buf, sizeof(buf));
  return fmt::format("{} (errno {})", text, err);
}

}  // namespace mics
