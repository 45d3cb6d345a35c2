// `mics launch`: starts the ranks of a job on this host and watches them.
//
//   mics launch -n N [--nodes K] [--no-prefix] [--port P] [--] CMD ARGS...
//     N ranks on this host, as K emulated nodes of N/K contiguous ranks each. The launcher
//     hosts the rendezvous store on 127.0.0.1 (port P, or any free port) and generates a
//     random job token.
//   mics launch -n N --nnodes K --node-rank I --master-addr A [--master-port P] -- CMD...
//     One of K hosts (torchrun-like): ranks I*N .. I*N+N-1. Only node rank 0 hosts the store
//     (on 0.0.0.0:P, default 29570); every host must export the same MICS_JOB_TOKEN.
//   SageMaker: without -n, when SM_HOSTS (JSON list), SM_CURRENT_HOST and SM_NUM_GPUS are set,
//     N = SM_NUM_GPUS, K = len(SM_HOSTS), I = index of SM_CURRENT_HOST, A = SM_HOSTS[0]; the
//     token is MICS_JOB_TOKEN, else derived from TRAINING_JOB_NAME ("sagemaker:<name>").
//
// Each rank gets MICS_RANK, MICS_WORLD_SIZE, MICS_LOCAL_RANK and MICS_LOCAL_SIZE (within its
// node, emulated or real), MICS_NODE_ID ("node<j>": always set, the emulated node on one host,
// the node rank across hosts), MICS_NODE_COUNT, MICS_MASTER_ADDR, MICS_MASTER_PORT,
// MICS_JOB_TOKEN and MICS_STORE_HOSTED=1. Its stdin is /dev/null; its stdout and stderr come
// back through pipes, each line prefixed "[rank] " unless --no-prefix.
//
// Each rank runs in its own process group (and dies with the launcher: PR_SET_PDEATHSIG).
// When a rank exits non-zero or dies by a signal, the others get SIGTERM (whole process
// groups), then SIGKILL 3 s later, and the launcher exits with the failed rank's status
// (128+signal for a signal) after naming it and showing its last stderr lines. SIGINT,
// SIGTERM and SIGHUP sent to the launcher are forwarded to every rank (a trainer finishes its
// step and stops), with SIGKILL only 30 s later or at a second signal; the launcher then exits
// with 128+signal. All ranks exit 0: exit 0.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/clock.hpp"
#include "base/error.hpp"
#include "base/strings.hpp"
#include "bootstrap/store.hpp"
#include "tools/commands.hpp"

extern char** environ;

namespace mics::tools {
namespace {

constexpr int kDefaultMasterPort = 29570;
constexpr double kKillGraceS = 3;       // a rank failed: SIGTERM the others, SIGKILL this much later
// A signal from the user (or a spot reclaim's SIGTERM) lets the ranks finish their step: a
// trainer stops cleanly after the current step, which can take a while on a large model.
constexpr double kSignalGraceS = 30;
constexpr double kDrainAfterExitS = 1;  // output still arriving from a rank's children
constexpr size_t kTailLines = 20;       // stderr lines kept per rank for the failure report
constexpr size_t kMaxLineBytes = 64 << 10;

struct Options {
  int nproc = 0;
  int nodes = 1;
  bool no_prefix = false;
  int port = -1;  // --port / --master-port; -1: not given
  int nnodes = 1;
  int node_rank = 0;
  std::string master_addr;
  std::vector<std::string> command;
};

// What to start, after every source of settings (flags, SageMaker) is resolved.
struct Layout {
  int nproc = 0;       // ranks on this host
  int first_rank = 0;  // global rank of the first one
  int world = 0;
  int node_count = 1;  // nodes of the job (emulated or real)
  int ranks_per_node = 0;
  bool multi_host = false;
  bool host_store = true;
  std::string bind_addr;    // where this launcher's store listens (host_store)
  std::string master_addr;  // what the ranks connect to
  int master_port = 0;      // 0: pick a free one (single host)
  std::string token;
  std::string origin;  // "flags" or "SageMaker"
};

[[noreturn]] void bad_usage(std::string message, std::string hint) {
  throw Error(ErrorKind::kInvalidArgument, std::move(message),
              {.layer = "launch", .where = "mics launch", .hint = std::move(hint)});
}

[[noreturn]] void bad_config(std::string message, std::string hint) {
  throw Error(ErrorKind::kConfig, std::move(message),
              {.layer = "launch", .where = "mics launch", .hint = std::move(hint)});
}

std::string random_token() {
  unsigned char bytes[16] = {};
  int fd = ::open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  size_t got = 0;
  while (fd >= 0 && got < sizeof(bytes)) {
    ssize_t n = ::read(fd, bytes + got, sizeof(bytes) - got);
    if (n > 0)
      got += static_cast<size_t>(n);
    else if (n < 0 && errno == EINTR)
      continue;
    else
      break;
  }
  if (fd >= 0) ::close(fd);
  if (got < sizeof(bytes))
    throw Error(ErrorKind::kUnavailable, "cannot read /dev/urandom for the job token",
                {.layer = "launch",
                 .where = "mics launch",
                 .hint = "the single-host launcher makes a fresh token for every job from "
                         "/dev/urandom: check that /dev/urandom exists and is readable here"});
  std::string hex;
  for (unsigned char b : bytes) hex += fmt::format("{:02x}", b);
  return hex;
}

Layout resolve(const Options& o) {
  Layout l;
  int nproc = o.nproc, nnodes = o.nnodes, node_rank = o.node_rank;
  std::string master_addr = o.master_addr;
  std::optional<std::string> token = env_string("MICS_JOB_TOKEN");
  l.origin = "flags";

  const auto sm_hosts = env_string("SM_HOSTS");
  const auto sm_current = env_string("SM_CURRENT_HOST");
  if (nproc == 0 && sm_hosts && sm_current) {
    l.origin = "SageMaker";
    std::vector<std::string> hosts;
    try {
      hosts = nlohmann::json::parse(*sm_hosts).get<std::vector<std::string>>();
    } catch (const std::exception& e) {
      bad_config(
          fmt::format("SM_HOSTS='{}' is not a JSON list of host names ({})", *sm_hosts, e.what()),
          "SageMaker sets SM_HOSTS like [\"algo-1\",\"algo-2\"]; pass -n and --nnodes "
          "instead when not on SageMaker");
    }
    if (hosts.empty()) bad_config("SM_HOSTS is an empty list", "pass -n, --nnodes and --node-rank");
    auto it = std::find(hosts.begin(), hosts.end(), *sm_current);
    if (it == hosts.end())
      bad_config(fmt::format("SM_CURRENT_HOST='{}' is not in SM_HOSTS={}", *sm_current, *sm_hosts),
                 "SageMaker sets both; pass --node-rank when they do not fit");
    auto gpus = parse_int64(env_string("SM_NUM_GPUS").value_or(""));
    if (!gpus || *gpus < 1 || *gpus > 4096)
      bad_config(fmt::format("SM_NUM_GPUS='{}' is not a number of GPUs (1..4096)",
                             env_string("SM_NUM_GPUS").value_or("")),
                 "on instances without GPUs pass -n (ranks per host) explicitly");
    nproc = static_cast<int>(*gpus);
    nnodes = static_cast<int>(hosts.size());
    node_rank = static_cast<int>(it - hosts.begin());
    if (master_addr.empty()) master_addr = hosts.front();
    if (!token) {
      if (auto job = env_string("TRAINING_JOB_NAME")) token = "sagemaker:" + *job;
    }
  }

  if (nproc <= 0)
    bad_usage("the number of ranks is missing",
              "pass -n N (ranks on this host), e.g. mics launch -n 4 -- ./train");
  if (o.command.empty()) bad_usage("no command to launch", "mics launch -n 4 -- CMD ARGS...");
  if (o.nodes < 1) bad_usage(fmt::format("--nodes {} is not positive", o.nodes), "--nodes K >= 1");
  if (nproc % o.nodes != 0)
    bad_usage(fmt::format("-n {} ranks cannot be split into --nodes {} equal emulated nodes", nproc,
                          o.nodes),
              fmt::format("choose a node count that divides {} (each emulated node gets a "
                          "contiguous block of n/K ranks)",
                          nproc));
  if (nnodes < 1) bad_usage(fmt::format("--nnodes {} is not positive", nnodes), "--nnodes K >= 1");
  if (node_rank < 0 || node_rank >= nnodes)
    bad_usage(fmt::format("--node-rank {} is not in [0, {})", node_rank, nnodes),
              "number the hosts 0 .. nnodes-1; node rank 0 hosts the store");
  if (nnodes > 1 && o.nodes > 1)
    bad_usage("--nodes (emulated nodes) cannot be combined with --nnodes > 1 (real hosts)",
              "use one or the other");

  l.nproc = nproc;
  l.multi_host = nnodes > 1;
  if (!l.multi_host) {
    l.first_rank = 0;
    l.world = nproc;
    l.node_count = o.nodes;
    l.ranks_per_node = nproc / o.nodes;
    l.host_store = true;
    l.bind_addr = "127.0.0.1";
    l.master_addr = "127.0.0.1";
    l.master_port = o.port > 0 ? o.port : 0;
    l.token = random_token();
    return l;
  }
  if (static_cast<int64_t>(nproc) * nnodes > (1 << 20))
    bad_usage("the job is larger than 2^20 ranks", "reduce -n or --nnodes");
  l.first_rank = node_rank * nproc;
  l.world = nproc * nnodes;
  l.node_count = nnodes;
  l.ranks_per_node = nproc;
  if (master_addr.empty())
    bad_usage("--master-addr is required with --nnodes > 1",
              "pass the address of the host with --node-rank 0, the same on every host");
  l.master_addr = master_addr;
  l.master_port = o.port > 0 ? o.port : kDefaultMasterPort;
  l.host_store = node_rank == 0;
  l.bind_addr = "0.0.0.0";
  if (!token)
    bad_config("MICS_JOB_TOKEN is not set: a job over several hosts needs a shared token",
               "export MICS_JOB_TOKEN=<the same unique value on every host> before mics launch "
               "(on SageMaker, TRAINING_JOB_NAME is used when set)");
  l.token = *token;
  return l;
}

// The program to exec: a name without '/' is looked up in PATH, as execvp would.
std::string resolve_program(const std::string& name) {
  auto executable = [](const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
           ::access(path.c_str(), X_OK) == 0;
  };
  if (name.find('/') != std::string::npos) {
    if (!executable(name))
      bad_usage(fmt::format("'{}' is not an executable file", name),
                "check the path and its permissions (chmod +x)");
    return name;
  }
  for (const auto& dir : split(env_string("PATH").value_or("/usr/local/bin:/usr/bin:/bin"), ':')) {
    const std::string path = (dir.empty() ? std::string(".") : dir) + "/" + name;
    if (executable(path)) return path;
  }
  bad_usage(fmt::format("command '{}' not found in PATH", name),
            "give the program's path, or add its directory to PATH");
}

// ---- signals: handlers only write the signal number into a pipe ------------------------------

int g_signal_pipe_write = -1;

void on_signal(int sig) {
  const int saved = errno;
  const unsigned char byte = static_cast<unsigned char>(sig);
  ssize_t ignored = ::write(g_signal_pipe_write, &byte, 1);
  (void)ignored;
  errno = saved;
}

class SignalRelay {
 public:
  SignalRelay() {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0)
      throw Error(ErrorKind::kIo, fmt::format("pipe2: {}", errno_text(errno)),
                  {.layer = "launch", .where = "mics launch", .hint = "out of file descriptors?"});
    read_fd_ = fds[0];
    write_fd_ = fds[1];
    g_signal_pipe_write = write_fd_;
    for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGCHLD}) {
      struct sigaction sa {};
      sa.sa_handler = on_signal;
      sigemptyset(&sa.sa_mask);
      sa.sa_flags = SA_RESTART | (sig == SIGCHLD ? SA_NOCLDSTOP : 0);
      struct sigaction old {};
      sigaction(sig, nullptr, &old);
      // A launcher started with SIGINT ignored (a background job of a script) leaves it so.
      if (sig == SIGINT && old.sa_handler == SIG_IGN) continue;
      sigaction(sig, &sa, &old);
      saved_.push_back({sig, old});
    }
  }
  ~SignalRelay() {
    for (auto& [sig, old] : saved_) sigaction(sig, &old, nullptr);
    g_signal_pipe_write = -1;
    ::close(read_fd_);
    ::close(write_fd_);
  }
  int fd() const { return read_fd_; }
  // Signals received since the last call.
  std::vector<int> take() {
    std::vector<int> sigs;
    unsigned char buf[64];
    ssize_t n;
    while ((n = ::read(read_fd_, buf, sizeof(buf))) > 0)
      for (ssize_t i = 0; i < n; ++i) sigs.push_back(buf[i]);
    return sigs;
  }

 private:
  int read_fd_ = -1, write_fd_ = -1;
  std::vector<std::pair<int, struct sigaction>> saved_;
};

// ---- ranks ------------------------------------------------------------------------------------

struct Stream {
  int fd = -1;
  int out = 1;  // where its lines go: 1 stdout, 2 stderr
  std::string partial;
};

struct Rank {
  int rank = 0;
  pid_t pid = -1;
  bool running = false;
  int wait_status = 0;
  Stream streams[2];
  std::deque<std::string> err_tail;
};

void write_all(int fd, const std::string& text) {
  size_t off = 0;
  while (off < text.size()) {
    ssize_t n = ::write(fd, text.data() + off, text.size() - off);
    if (n > 0) {
      off += static_cast<size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && errno == EAGAIN) {
      pollfd p{fd, POLLOUT, 0};
      ::poll(&p, 1, 100);
    } else {
      return;  // our own output is gone: keep supervising the ranks regardless
    }
  }
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return fmt::format("exited with status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    return fmt::format("was killed by signal {} ({}){}", sig,
                       sigabbrev_np(sig) ? sigabbrev_np(sig) : "?",
                       WCOREDUMP(status) ? ", core dumped" : "");
  }
  return fmt::format("ended with wait status {}", status);
}

int exit_code_of(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

bool failed(int status) {
  return !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

class Supervisor {
 public:
  Supervisor(const Options& o, const Layout& l) : opts_(o), layout_(l) {}
  int run();

 private:
  std::vector<std::string> child_env(int local, int store_port) const;
  void spawn(Rank& r, const std::string& program, const std::vector<std::string>& env);
  void on_bytes(Rank& r, Stream& s, const char* data, size_t n);
  void emit_line(Rank& r, Stream& s, std::string_view line, bool newline);
  void close_stream(Rank& r, Stream& s);
  void reap();
  void signal_all(int sig);
  void begin_stop(int sig, Clock::time_point now, double grace_s = kKillGraceS);

  const Options& opts_;
  const Layout& layout_;
  std::vector<Rank> ranks_;
  pid_t launcher_pid_ = ::getpid();
  bool stopping_ = false;
  bool killed_ = false;
  Clock::time_point kill_at_{};
  std::optional<int> failed_rank_;     // the first rank that failed on its own
  std::optional<int> interrupted_by_;  // the signal the launcher got
};

std::vector<std::string> Supervisor::child_env(int local, int store_port) const {
  static const char* kOurs[] = {
      "MICS_RANK=",      "MICS_WORLD_SIZE=",  "MICS_LOCAL_RANK=",  "MICS_LOCAL_SIZE=",
      "MICS_NODE_ID=",   "MICS_NODE_COUNT=",  "MICS_MASTER_ADDR=", "MICS_MASTER_PORT=",
      "MICS_JOB_TOKEN=", "MICS_STORE_HOSTED="};
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) {
    std::string_view entry(*e);
    bool ours = false;
    for (const char* prefix : kOurs) ours |= entry.starts_with(prefix);
    if (!ours) env.emplace_back(entry);
  }
  const int rank = layout_.first_rank + local;
  const int node =
      layout_.multi_host ? layout_.first_rank / layout_.nproc : local / layout_.ranks_per_node;
  const int local_rank = layout_.multi_host ? local : local % layout_.ranks_per_node;
  env.push_back(fmt::format("MICS_RANK={}", rank));
  env.push_back(fmt::format("MICS_WORLD_SIZE={}", layout_.world));
  env.push_back(fmt::format("MICS_LOCAL_RANK={}", local_rank));
  env.push_back(fmt::format("MICS_LOCAL_SIZE={}", layout_.ranks_per_node));
  env.push_back(fmt::format("MICS_NODE_ID=node{}", node));
  env.push_back(fmt::format("MICS_NODE_COUNT={}", layout_.node_count));
  env.push_back(fmt::format("MICS_MASTER_ADDR={}", layout_.master_addr));
  env.push_back(fmt::format("MICS_MASTER_PORT={}", store_port));
  env.push_back(fmt::format("MICS_JOB_TOKEN={}", layout_.token));
  env.push_back("MICS_STORE_HOSTED=1");
  return env;
}

void Supervisor::spawn(Rank& r, const std::string& program, const std::vector<std::string>& env) {
  // Everything the child needs is built before fork: after it, only async-signal-safe calls
  // (the store's thread may hold the allocator's lock at the moment of the fork).
  std::vector<char*> argv, envp;
  for (const auto& a : opts_.command) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (const auto& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  auto sys_fail = [&](const char* call) {
    throw Error(ErrorKind::kIo,
                fmt::format("{} failed for rank {}: {}", call, r.rank, errno_text(errno)),
                {.layer = "launch",
                 .where = "starting the ranks",
                 .peer = r.rank,
                 .hint = "the host may be out of processes or file descriptors (ulimit -u/-n)"});
  };
  int out_pipe[2], err_pipe[2], exec_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0) sys_fail("pipe2");
  if (pipe2(err_pipe, O_CLOEXEC) != 0) sys_fail("pipe2");
  if (pipe2(exec_pipe, O_CLOEXEC) != 0) sys_fail("pipe2");
  const int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  const pid_t parent = launcher_pid_;
  sigset_t all, old_mask;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old_mask);  // no handler runs in the child before exec
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::setpgid(0, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(126);  // the launcher is already gone
    if (devnull >= 0) ::dup2(devnull, 0);
    ::dup2(out_pipe[1], 1);
    ::dup2(err_pipe[1], 2);
    for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGCHLD, SIGPIPE}) {
      struct sigaction sa {};
      sa.sa_handler = SIG_DFL;
      if (sig == SIGINT) {
        struct sigaction cur {};
        ::sigaction(SIGINT, nullptr, &cur);
        if (cur.sa_handler == SIG_IGN) continue;
      }
      ::sigaction(sig, &sa, nullptr);
    }
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execve(program.c_str(), argv.data(), envp.data());
    const int err = errno;
    ssize_t ignored = ::write(exec_pipe[1], &err, sizeof(err));
    (void)ignored;
    ::_exit(127);
  }
  const int fork_errno = errno;
  pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  if (devnull >= 0) ::close(devnull);
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  ::close(exec_pipe[1]);
  if (pid < 0) {
    ::close(out_pipe[0]);
    ::close(err_pipe[0]);
    ::close(exec_pipe[0]);
    errno = fork_errno;
    sys_fail("fork");
  }
  ::setpgid(pid, pid);  // also here, so the group exists before we may signal it
  r.pid = pid;
  r.running = true;
  r.streams[0] = {out_pipe[0], 1, {}};
  r.streams[1] = {err_pipe[0], 2, {}};
  int exec_errno = 0;
  ssize_t n;
  do {
    n = ::read(exec_pipe[0], &exec_errno, sizeof(exec_errno));
  } while (n < 0 && errno == EINTR);
  ::close(exec_pipe[0]);
  if (n == static_cast<ssize_t>(sizeof(exec_errno)))
    throw Error(
        ErrorKind::kUnavailable,
        fmt::format("cannot execute '{}' for rank {}: {}", program, r.rank, errno_text(exec_errno)),
        {.layer = "launch",
         .where = "starting the ranks",
         .peer = r.rank,
         .hint = "check that the program exists, is executable and is built for this "
                 "machine"});
}

void Supervisor::emit_line(Rank& r, Stream& s, std::string_view line, bool newline) {
  if (s.out == 2) {
    r.err_tail.emplace_back(line);
    if (r.err_tail.size() > kTailLines) r.err_tail.pop_front();
  }
  if (opts_.no_prefix) return;  // passed through as raw bytes already
  std::string text = fmt::format("[{}] ", r.rank);
  text.append(line);
  if (newline) text += '\n';
  write_all(s.out, text);
}

void Supervisor::on_bytes(Rank& r, Stream& s, const char* data, size_t n) {
  if (opts_.no_prefix) write_all(s.out, std::string(data, n));
  s.partial.append(data, n);
  size_t start = 0;
  while (true) {
    const size_t nl = s.partial.find('\n', start);
    if (nl == std::string::npos) break;
    emit_line(r, s, std::string_view(s.partial).substr(start, nl - start), true);
    start = nl + 1;
  }
  s.partial.erase(0, start);
  if (s.partial.size() > kMaxLineBytes) {  // a very long line: pass it on in pieces
    emit_line(r, s, s.partial, true);
    s.partial.clear();
  }
}

void Supervisor::close_stream(Rank& r, Stream& s) {
  if (!s.partial.empty()) {
    emit_line(r, s, s.partial, true);
    s.partial.clear();
  }
  ::close(s.fd);
  s.fd = -1;
}

void Supervisor::reap() {
  for (auto& r : ranks_) {
    if (!r.running) continue;
    int status = 0;
    pid_t got;
    do {
      got = ::waitpid(r.pid, &status, WNOHANG);
    } while (got < 0 && errno == EINTR);
    if (got != r.pid) continue;
    r.running = false;
    r.wait_status = status;
    if (failed(status) && !stopping_) {
      failed_rank_ = r.rank;
      write_all(2, fmt::format("mics launch: rank {} {}; stopping the other ranks\n", r.rank,
                               describe_status(status)));
      begin_stop(SIGTERM, Clock::now());
    }
  }
}

void Supervisor::signal_all(int sig) {
  // Only ranks not yet reaped: their pid (and so their group id) cannot have been reused.
  for (auto& r : ranks_)
    if (r.running) ::kill(-r.pid, sig);
}

void Supervisor::begin_stop(int sig, Clock::time_point now, double grace_s) {
  stopping_ = true;
  signal_all(sig);
  kill_at_ =
      now + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(grace_s));
}

int Supervisor::run() {
  SignalRelay signals;
  std::unique_ptr<bootstrap::StoreServer> store;
  int store_port = layout_.master_port;
  if (layout_.host_store) {
    store = std::make_unique<bootstrap::StoreServer>(layout_.bind_addr, layout_.master_port,
                                                     layout_.token);
    store_port = store->port();
  }
  const std::string program = resolve_program(opts_.command[0]);

  ranks_.resize(static_cast<size_t>(layout_.nproc));
  try {
    for (int i = 0; i < layout_.nproc; ++i) {
      ranks_[i].rank = layout_.first_rank + i;
      spawn(ranks_[i], program, child_env(i, store_port));
    }
  } catch (const Error&) {
    signal_all(SIGKILL);
    for (auto& r : ranks_)
      if (r.running) ::waitpid(r.pid, nullptr, 0);
    for (auto& r : ranks_)
      for (auto& s : r.streams)
        if (s.fd >= 0) ::close(s.fd);
    throw;
  }

  std::optional<Clock::time_point> all_exited_at;
  std::vector<pollfd> fds;
  std::vector<std::pair<Rank*, Stream*>> owners;
  char buf[65536];
  while (true) {
    const auto now = Clock::now();
    bool any_running = false, any_open = false;
    for (auto& r : ranks_) {
      any_running |= r.running;
      for (auto& s : r.streams) any_open |= s.fd >= 0;
    }
    if (!any_running && !all_exited_at) all_exited_at = now;
    if (!any_running &&
        (!any_open || now - *all_exited_at >= std::chrono::duration<double>(kDrainAfterExitS)))
      break;
    if (stopping_ && !killed_ && now >= kill_at_) {
      signal_all(SIGKILL);
      killed_ = true;
    }

    fds.clear();
    owners.clear();
    fds.push_back({signals.fd(), POLLIN, 0});
    for (auto& r : ranks_)
      for (auto& s : r.streams)
        if (s.fd >= 0) {
          fds.push_back({s.fd, POLLIN, 0});
          owners.emplace_back(&r, &s);
        }
    int timeout_ms = -1;
    auto until = [&](Clock::time_point t) {
      const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t - now).count() + 1;
      const int v = static_cast<int>(std::max<int64_t>(ms, 0));
      timeout_ms = timeout_ms < 0 ? v : std::min(timeout_ms, v);
    };
    if (stopping_ && !killed_) until(kill_at_);
    if (all_exited_at)
      until(*all_exited_at + std::chrono::duration_cast<Clock::duration>(
                                 std::chrono::duration<double>(kDrainAfterExitS)));
    if (any_running) timeout_ms = timeout_ms < 0 ? 1000 : std::min(timeout_ms, 1000);
    const int n = ::poll(fds.data(), fds.size(), timeout_ms);
    if (n < 0 && errno != EINTR)
      throw Error(ErrorKind::kIo, fmt::format("poll: {}", errno_text(errno)),
                  {.layer = "launch", .where = "watching the ranks"});

    if (n > 0 && fds[0].revents) {
      for (int sig : signals.take()) {
        if (sig == SIGCHLD) continue;  // reaped below in any case
        if (!interrupted_by_) {
          interrupted_by_ = sig;
          write_all(2, fmt::format("mics launch: got {}, forwarding it to the ranks\n",
                                   sigabbrev_np(sig) ? std::string("SIG") + sigabbrev_np(sig)
                                                     : std::to_string(sig)));
          begin_stop(sig, Clock::now(), kSignalGraceS);
        } else if (!killed_) {
          write_all(2, "mics launch: second signal, killing the ranks\n");
          signal_all(SIGKILL);
          killed_ = true;
        }
      }
    }
    for (size_t i = 1; n > 0 && i < fds.size(); ++i) {
      if (!fds[i].revents) continue;
      auto [r, s] = owners[i - 1];
      ssize_t got = ::read(s->fd, buf, sizeof(buf));
      if (got > 0) {
        on_bytes(*r, *s, buf, static_cast<size_t>(got));
      } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
        close_stream(*r, *s);
      }
    }
    reap();  // cheap, and robust against coalesced SIGCHLDs
  }
  // Output pipes held open by a rank's leftover children are abandoned, not waited for.
  for (auto& r : ranks_)
    for (auto& s : r.streams)
      if (s.fd >= 0) close_stream(r, s);

  if (failed_rank_) {
    const Rank& r = ranks_[static_cast<size_t>(*failed_rank_ - layout_.first_rank)];
    std::string text =
        fmt::format("mics launch: error: rank {} {}", r.rank, describe_status(r.wait_status));
    int others = 0;
    for (const auto& o : ranks_) others += &o != &r;
    if (others > 0)
      text += fmt::format(" (the other {} rank{} were stopped)", others, others == 1 ? "" : "s");
    if (r.err_tail.empty()) {
      text += "; it wrote nothing to stderr\n";
    } else {
      text += fmt::format("; its last {} stderr line{}:\n", r.err_tail.size(),
                          r.err_tail.size() == 1 ? "" : "s");
      for (const auto& line : r.err_tail) text += fmt::format("  [{}] {}\n", r.rank, line);
    }
    write_all(2, text);
    return exit_code_of(r.wait_status);
  }
  if (interrupted_by_) return 128 + *interrupted_by_;
  for (const auto& r : ranks_)  // not reachable without a failure, kept for safety
    if (failed(r.wait_status)) return exit_code_of(r.wait_status);
  return 0;
}

}  // namespace

Runner add_launch_command(CLI::App& app) {
  auto opts = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand(
      "launch",
      "start N ranks on this host (optionally as K emulated nodes), or this host's share of a "
      "multi-host job; hosts the rendezvous store and supervises the ranks");
  sub->add_option("-n,--nproc-per-node", opts->nproc, "ranks to start on this host")
      ->check(CLI::Range(1, 1 << 16));
  sub->add_option("--nodes", opts->nodes,
                  "emulated nodes on this host: contiguous blocks of n/K ranks, each with its own "
                  "MICS_NODE_ID")
      ->check(CLI::Range(1, 1 << 16));
  sub->add_flag("--no-prefix", opts->no_prefix, "do not prefix output lines with [rank]");
  sub->add_option("--port,--master-port", opts->port,
                  "TCP port of the rendezvous store (default: any free port on one host, " +
                      std::to_string(kDefaultMasterPort) + " across hosts)")
      ->check(CLI::Range(1, 65535));
  sub->add_option("--nnodes", opts->nnodes, "hosts in the job (each runs mics launch)")
      ->check(CLI::Range(1, 1 << 16));
  sub->add_option("--node-rank", opts->node_rank, "this host's index in [0, nnodes)")
      ->check(CLI::Range(0, 1 << 16));
  sub->add_option("--master-addr", opts->master_addr,
                  "address of the host with node rank 0 (hosts the store) when --nnodes > 1");
  sub->add_option("command", opts->command, "the program to run as every rank, and its arguments")
      ->required();
  sub->positionals_at_end();  // everything from the command on belongs to the command
  sub->footer(
      "Each rank gets MICS_RANK, MICS_WORLD_SIZE, MICS_LOCAL_RANK, MICS_LOCAL_SIZE, "
      "MICS_NODE_ID, MICS_NODE_COUNT, MICS_MASTER_ADDR, MICS_MASTER_PORT, MICS_JOB_TOKEN and "
      "MICS_STORE_HOSTED=1.\nOn SageMaker (SM_HOSTS, SM_CURRENT_HOST, SM_NUM_GPUS set), -n and the "
      "host layout may be left out.\nExample: mics launch -n 4 --nodes 2 -- mics bench");
  return [opts]() -> int {
    const Layout layout = resolve(*opts);
    Supervisor supervisor(*opts, layout);
    return supervisor.run();
  };
}

}  // namespace mics::tools
