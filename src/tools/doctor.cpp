// `mics doctor`: what this machine offers mics (libfabric providers, the provider of each rail,
// EFA, shared memory, GPUs, NCCL) and what the environment asks of it, with a line of
// explanation per variable and warnings where the settings contradict the machine.
//
// Exit status: 0 when every check passes or only warns; 1 when a rail has no provider (mics
// cannot start a job here). --json FILE writes the same facts for scripts ("-": stdout only).
#include <sched.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/cuda_info.hpp"
#include "base/error.hpp"
#include "base/knobs.hpp"
#include "base/strings.hpp"
#include "fabric/providers.hpp"
#include "mics/build_info.hpp"
#include "tools/commands.hpp"

namespace mics::tools {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

// ---- findings -----------------------------------------------------------------------------

enum class Level { kOk, kNote, kWarn, kFail };

const char* level_tag(Level level) {
  switch (level) {
    case Level::kOk:
      return "ok";
    case Level::kNote:
      return "note";
    case Level::kWarn:
      return "warn";
    case Level::kFail:
      return "FAIL";
  }
  return "?";
}

struct Finding {
  Level level;
  std::string area;  // "rails", "efa", "environment", ...
  std::string text;
};

// The report is written as it is built: text for people, JSON for scripts, and every
// finding in one list for the summary and the exit status.
class Report {
 public:
  void section(const std::string& title) { text_ += fmt::format("\n== {} ==\n", title); }
  void line(const std::string& s) { text_ += "  " + s + "\n"; }
  void fact(const std::string& key, const std::string& value) {
    text_ += fmt::format("  {:<26} {}\n", key, value);
  }
  void add(Level level, const std::string& area, const std::string& text) {
    findings_.push_back({level, area, text});
    text_ += fmt::format("  [{}] {}\n", level_tag(level), text);
  }
  int count(Level level) const {
    return static_cast<int>(std::count_if(findings_.begin(), findings_.end(),
                                          [&](const Finding& f) { return f.level == level; }));
  }
  const std::vector<Finding>& findings() const { return findings_; }
  const std::string& text() const { return text_; }

 private:
  std::string text_;
  std::vector<Finding> findings_;
};

// ---- small readers ------------------------------------------------------------------------

std::optional<std::string> read_first_line(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::string s;
  std::getline(in, s);
  return trim(s);
}

// "HugePages_Total:  0" -> 0 (kB values keep their unit stripped).
std::map<std::string, int64_t> read_meminfo() {
  std::map<std::string, int64_t> out;
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string rest = trim(line.substr(colon + 1));
    auto space = rest.find(' ');
    if (auto v = parse_int64(rest.substr(0, space))) out[line.substr(0, colon)] = *v;
  }
  return out;
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// libfabric's boolean parameters accept these spellings (fi_param_get_bool).
std::optional<bool> parse_fi_bool(const std::string& v) {
  const std::string l = lower(trim(v));
  if (l == "1" || l == "on" || l == "true" || l == "yes" || l == "y") return true;
  if (l == "0" || l == "off" || l == "false" || l == "no" || l == "n") return false;
  return std::nullopt;
}

std::optional<std::string> env_raw(const char* name) {
  const char* v = std::getenv(name);
  if (!v) return std::nullopt;
  return std::string(v);
}

std::vector<std::string> net_interfaces() {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/sys/class/net", ec))
    names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// Can a process that is not our ancestor read our memory with process_vm_readv? That is the
// Cross Memory Attach (CMA) single copy libfabric's shm provider uses for large messages
// between ranks, which are siblings (children of mpirun, srun or `mics launch`), not
// ancestors. A forked child reading its parent is the same test: under Yama ptrace_scope 1 a
// process may only attach to its own descendants. Returns "" when it works, else why not.
std::string probe_cma() {
  static char buffer[4096];
  std::memset(buffer, 0x5a, sizeof(buffer));
  const pid_t parent = getpid();
  const pid_t child = fork();
  if (child < 0) return "fork failed: " + errno_text(errno);
  if (child == 0) {
    char local[sizeof(buffer)];
    iovec liov{local, sizeof(local)};
    iovec riov{buffer, sizeof(buffer)};
    ssize_t n = process_vm_readv(parent, &liov, 1, &riov, 1, 0);
    _exit(n == static_cast<ssize_t>(sizeof(local)) ? 0 : (errno > 0 && errno < 255 ? errno : 255));
  }
  int status = 0;
  while (waitpid(child, &status, 0) < 0) {
    if (errno != EINTR) return "waitpid failed: " + errno_text(errno);
  }
  if (!WIFEXITED(status)) return "the probe process died";
  int code = WEXITSTATUS(status);
  if (code == 0) return "";
  return "process_vm_readv from a sibling-like process failed: " +
         (code == 255 ? std::string("short read") : errno_text(code));
}

// ---- environment variables ----------------------------------------------------------------

struct EnvSpec {
  const char* name;
  const char* help;
};

// The variables AWS's EFA/NCCL guidance names, plus two that explain shm's behaviour.
const std::vector<EnvSpec>& env_specs() {
  static const std::vector<EnvSpec> specs = {
      {"FI_PROVIDER",
       "provider of the inter-node rail (mics reads it, then hides it from libfabric so shm "
       "stays usable); EFA guidance: efa"},
      {"FI_EFA_USE_DEVICE_RDMA",
       "efa: use the device's RDMA read for transfers (GPUDirect RDMA on p4d/p5); 1 fails on "
       "devices without RDMA"},
      {"FI_EFA_FORK_SAFE",
       "efa: make registered memory safe across fork() (data-loader workers) on kernels without "
       "copy-on-fork; turns huge pages off"},
      {"FI_EFA_USE_HUGE_PAGE",
       "efa: allocate internal buffers from huge pages (default when possible); 0 when the "
       "program forks or huge pages are scarce"},
      {"FI_LOG_LEVEL", "libfabric log level on stderr: warn (default), info, debug, trace"},
      {"FI_SHM_DISABLE_CMA",
       "shm: 1 turns off the single-copy CMA path (large messages then go through bounce "
       "buffers)"},
      {"NCCL_NET_GDR_LEVEL",
       "NCCL: furthest NIC-to-GPU distance at which GPUDirect RDMA is used (LOC, PIX, PXB, "
       "PHB, SYS; legacy integers 0-4, larger = SYS)"},
      {"NCCL_DEBUG",
       "NCCL log level: VERSION, WARN, INFO (shows the network NCCL picked, e.g. NET/OFI with "
       "efa), TRACE"},
      {"NCCL_SOCKET_IFNAME",
       "NCCL: interfaces for bootstrap and socket traffic (prefixes; ^ excludes, = exact), e.g. "
       "^lo,docker"},
      {"NCCL_PROTO", "NCCL: protocols allowed (LL, LL128, Simple; a leading ^ excludes)"},
      {"NCCL_ALGO",
       "NCCL: algorithms allowed (Ring, Tree, CollnetDirect, CollnetChain, NVLS, NVLSTree, PAT; "
       "^ excludes)"},
      {"NCCL_MIN_NRINGS",
       "NCCL: legacy name of NCCL_MIN_NCHANNELS, the least channels (CUDA blocks) per "
       "collective"},
      {"NCCL_MIN_NCHANNELS", "NCCL: least channels per collective; wins over NCCL_MIN_NRINGS"},
      {"NCCL_NVLS_ENABLE",
       "NCCL: NVLink SHARP (NVSwitch multicast) on H100/H200 NVSwitch systems; 0 turns it off "
       "and frees its GPU memory"},
      {"NCCL_NET_PLUGIN",
       "NCCL: network plugin library; aws-ofi-nccl (libnccl-net-ofi.so) carries NCCL over "
       "libfabric/EFA"},
      {"NCCL_TUNER_PLUGIN",
       "NCCL: tuner plugin library choosing algorithm/protocol (aws-ofi-nccl ships one for "
       "EFA)"},
  };
  return specs;
}

struct Facts {
  std::vector<std::string> providers;
  bool efa_provider = false;
  bool rdma_provider = false;  // efa or verbs: a NIC GPUDirect RDMA could use
  bool inter_rail_ok = false;
  CudaInfo cuda;
  int64_t hugepages_total = 0;
};

std::string env_value(const char* name) {
  if (std::string(name) == "FI_PROVIDER") {
    // fabric::prepare_libfabric_environment() removed it from the environment; the knob
    // captured it first.
    return knobs().inter_provider;
  }
  return env_raw(name).value_or("");
}

bool env_set(const char* name) {
  if (std::string(name) == "FI_PROVIDER") return !knobs().inter_provider.empty();
  return env_raw(name).has_value();
}

void check_bool_var(Report& r, const char* name) {
  if (!env_set(name)) return;
  if (!parse_fi_bool(env_value(name)))
    r.add(Level::kWarn, "environment",
          fmt::format("{}='{}' is not a libfabric boolean (use 0/1, on/off, true/false, yes/no)",
                      name, env_value(name)));
}

// Splits "^a,b" into its tokens; sets *negated for a leading ^.
std::vector<std::string> list_tokens(std::string value, bool* negated) {
  value = trim(value);
  *negated = !value.empty() && value[0] == '^';
  if (*negated) value = value.substr(1);
  std::vector<std::string> out;
  for (auto& t : split(value, ',')) {
    std::string tt = trim(t);
    if (!tt.empty()) out.push_back(tt);
  }
  return out;
}

void check_token_list(Report& r, const char* name, const std::vector<std::string>& allowed) {
  if (!env_set(name)) return;
  const std::string value = env_value(name);
  if (value.find(':') != std::string::npos) return;  // per-collective syntax of newer NCCL
  bool negated = false;
  std::vector<std::string> unknown;
  for (const auto& t : list_tokens(value, &negated)) {
    bool ok = std::any_of(allowed.begin(), allowed.end(),
                          [&](const std::string& a) { return lower(a) == lower(t); });
    if (!ok) unknown.push_back(t);
  }
  if (!unknown.empty())
    r.add(Level::kWarn, "environment",
          fmt::format("{}='{}': unknown {} '{}' (known: {})", name, value,
                      unknown.size() == 1 ? "entry" : "entries", join(unknown, ", "),
                      join(allowed, ", ")));
}

void check_environment(Report& r, const Facts& f) {
  const bool gpu = f.cuda.device_count > 0;
  const bool nccl_usable = f.cuda.built_with_nccl && gpu;
  const std::string listed = f.providers.empty() ? "none" : join(f.providers, ", ");

  // FI_PROVIDER
  if (env_set("FI_PROVIDER")) {
    const std::string p = env_value("FI_PROVIDER");
    if (!f.inter_rail_ok) {
      r.add(Level::kWarn, "environment",
            fmt::format("FI_PROVIDER='{}' names a provider libfabric does not offer here "
                        "(available: {}); the inter-node rail cannot start",
                        p, listed));
    } else if (p == "shm" || p.rfind("shm;", 0) == 0) {
      r.add(Level::kWarn, "environment",
            "FI_PROVIDER=shm: shm only reaches processes on this host, so ranks on other nodes "
            "cannot be reached; unset it or name a network provider (efa, verbs, tcp)");
    } else if (f.efa_provider && p.rfind("efa", 0) != 0) {
      r.add(Level::kWarn, "environment",
            fmt::format("EFA is present but FI_PROVIDER='{}': inter-node traffic will not use "
                        "EFA; unset FI_PROVIDER or set it to efa",
                        p));
    }
  }

  // FI_EFA_*
  for (const char* name :
       {"FI_EFA_USE_DEVICE_RDMA", "FI_EFA_FORK_SAFE", "FI_EFA_USE_HUGE_PAGE", "FI_SHM_DISABLE_CMA"})
    check_bool_var(r, name);
  if (!f.efa_provider) {
    for (const char* name : {"FI_EFA_USE_DEVICE_RDMA", "FI_EFA_FORK_SAFE", "FI_EFA_USE_HUGE_PAGE"})
      if (env_set(name))
        r.add(Level::kWarn, "environment",
              fmt::format("{}={} has no effect: libfabric offers no efa provider on this host",
                          name, env_value(name)));
  }
  auto fork_safe =
      env_set("FI_EFA_FORK_SAFE") ? parse_fi_bool(env_value("FI_EFA_FORK_SAFE")) : std::nullopt;
  auto huge = env_set("FI_EFA_USE_HUGE_PAGE") ? parse_fi_bool(env_value("FI_EFA_USE_HUGE_PAGE"))
                                              : std::nullopt;
  if (fork_safe.value_or(false) && huge.value_or(false))
    r.add(Level::kWarn, "environment",
          "FI_EFA_FORK_SAFE and FI_EFA_USE_HUGE_PAGE are both on: the efa provider refuses "
          "this combination (its huge-page buffers are not fork-safe); drop one of them");
  if (env_set("FI_SHM_DISABLE_CMA") &&
      parse_fi_bool(env_value("FI_SHM_DISABLE_CMA")).value_or(false))
    r.add(Level::kNote, "environment",
          "FI_SHM_DISABLE_CMA=1: shm copies large messages twice through shared buffers");

  // FI_LOG_LEVEL
  if (env_set("FI_LOG_LEVEL")) {
    const std::string l = lower(env_value("FI_LOG_LEVEL"));
    if (l != "warn" && l != "info" && l != "debug" && l != "trace")
      r.add(Level::kWarn, "environment",
            fmt::format("FI_LOG_LEVEL='{}' is not one of warn, info, debug, trace",
                        env_value("FI_LOG_LEVEL")));
    else if (l == "debug" || l == "trace")
      r.add(Level::kNote, "environment",
            fmt::format("FI_LOG_LEVEL={}: very verbose, and slows the data path", l));
  }

  // NCCL_NET_GDR_LEVEL
  if (env_set("NCCL_NET_GDR_LEVEL")) {
    const std::string v = env_value("NCCL_NET_GDR_LEVEL");
    const std::string u = lower(v);
    const bool valid = parse_int64(v).has_value() || u == "loc" || u == "pix" || u == "pxb" ||
                       u == "phb" || u == "sys" || u == "nvl" || u == "nvb" || u == "pxn";
    if (!valid)
      r.add(Level::kWarn, "environment",
            fmt::format("NCCL_NET_GDR_LEVEL='{}' is not a level (LOC, PIX, PXB, PHB, SYS or "
                        "an integer)",
                        v));
    if (!nccl_usable)
      r.add(Level::kWarn, "environment",
            fmt::format(
                "NCCL_NET_GDR_LEVEL={} has no effect here: {}", v,
                !f.cuda.built_with_nccl ? "this build of mics has no NCCL" : "no GPU is visible"));
    else if (!f.rdma_provider)
      r.add(Level::kWarn, "environment",
            fmt::format("NCCL_NET_GDR_LEVEL={}: GPUDirect RDMA needs an RDMA NIC (EFA or "
                        "InfiniBand) and none is offered here",
                        v));
  }

  // Other NCCL variables set where NCCL cannot run.
  if (!nccl_usable) {
    std::vector<std::string> set;
    for (const auto& s : env_specs())
      if (std::string(s.name).rfind("NCCL_", 0) == 0 &&
          std::string(s.name) != "NCCL_NET_GDR_LEVEL" && env_set(s.name))
        set.push_back(s.name);
    if (!set.empty())
      r.add(Level::kNote, "environment",
            fmt::format("{} only affect{} GPU collectives, and {}", join(set, ", "),
                        set.size() == 1 ? "s" : "",
                        !f.cuda.built_with_nccl ? "this build of mics has no NCCL"
                                                : "no GPU is visible here"));
  }

  if (env_set("NCCL_DEBUG")) {
    const std::string u = lower(env_value("NCCL_DEBUG"));
    if (u != "version" && u != "warn" && u != "info" && u != "trace" && u != "abort")
      r.add(Level::kWarn, "environment",
            fmt::format("NCCL_DEBUG='{}' is not one of VERSION, WARN, INFO, TRACE",
                        env_value("NCCL_DEBUG")));
  }
  check_token_list(r, "NCCL_PROTO", {"LL", "LL128", "Simple"});
  check_token_list(r, "NCCL_ALGO",
                   {"Ring", "Tree", "CollnetDirect", "CollnetChain", "NVLS", "NVLSTree", "PAT"});

  if (env_set("NCCL_SOCKET_IFNAME")) {
    bool negated = false;
    const auto wanted = list_tokens(env_value("NCCL_SOCKET_IFNAME"), &negated);
    const auto have = net_interfaces();
    if (!negated) {
      bool any = false;
      for (const auto& w : wanted) {
        const bool exact = !w.empty() && w[0] == '=';
        const std::string key = exact ? w.substr(1) : w;
        for (const auto& h : have)
          if (exact ? h == key : h.rfind(key, 0) == 0) any = true;
      }
      if (!any)
        r.add(Level::kWarn, "environment",
              fmt::format("NCCL_SOCKET_IFNAME='{}' matches no interface of this host ({})",
                          env_value("NCCL_SOCKET_IFNAME"), join(have, ", ")));
    }
  }

  if (env_set("NCCL_MIN_NRINGS")) {
    r.add(Level::kNote, "environment",
          env_set("NCCL_MIN_NCHANNELS")
              ? "NCCL_MIN_NRINGS is ignored: NCCL_MIN_NCHANNELS is also set and wins"
              : "NCCL_MIN_NRINGS is the legacy name; NCCL still reads it, NCCL_MIN_NCHANNELS is "
                "current");
  }

  if (gpu && !env_set("NCCL_NVLS_ENABLE"))
    r.add(Level::kNote, "environment",
          "NCCL_NVLS_ENABLE is unset: NCCL uses NVLink SHARP where the GPUs sit on NVSwitches "
          "with multicast; it reserves extra GPU memory per communicator, and on shared or "
          "virtualised hosts multicast may be unavailable or unwelcome: set NCCL_NVLS_ENABLE=0 "
          "there");

  if (gpu && f.efa_provider && !env_set("NCCL_NET_PLUGIN"))
    r.add(Level::kNote, "environment",
          "NCCL reaches EFA only through the aws-ofi-nccl plugin: make sure its "
          "libnccl-net(-ofi).so is on the library path or named by NCCL_NET_PLUGIN, and check "
          "with NCCL_DEBUG=INFO that NET/OFI selects efa");
}

// ---- sections -----------------------------------------------------------------------------

void section_mics(Report& r, json& j, const CudaInfo& cuda) {
  r.section("mics");
  r.fact("version", build::kVersion);
  r.fact("build type", build::kBuildType);
  r.fact("compiler", build::kCompiler);
  r.fact("CUDA parts", cuda.built_with_cuda ? "built (MICS_HAVE_CUDA)" : "not built");
  r.fact("NCCL", cuda.built_with_nccl ? "built (MICS_HAVE_NCCL)" : "not built");
  j["mics"] = {{"version", build::kVersion},
               {"build_type", build::kBuildType},
               {"compiler", build::kCompiler},
               {"cuda", cuda.built_with_cuda},
               {"nccl", cuda.built_with_nccl}};
}

void section_system(Report& r, json& j, Facts& f, const std::string& cma) {
  r.section("system");
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  const auto node_id = env_raw("MICS_NODE_ID");
  cpu_set_t set;
  CPU_ZERO(&set);
  int usable = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : -1;
  long online = sysconf(_SC_NPROCESSORS_ONLN);
  r.fact("host", host);
  r.fact("node (MICS_NODE_ID)", node_id ? *node_id : "(unset: the host name is the node)");
  r.fact("cpus", fmt::format("{} usable of {} online", usable, online));
  json js = {{"hostname", host},
             {"node_id", node_id ? json(*node_id) : json(nullptr)},
             {"cpus_usable", usable},
             {"cpus_online", online}};

  // Huge pages.
  auto mem = read_meminfo();
  f.hugepages_total = mem["HugePages_Total"];
  const auto thp = read_first_line("/sys/kernel/mm/transparent_hugepage/enabled");
  r.fact("huge pages", fmt::format("{} reserved, {} free, {} kB each", mem["HugePages_Total"],
                                   mem["HugePages_Free"], mem["Hugepagesize"]));
  r.fact("transparent huge pages", thp.value_or("(unknown)"));
  js["hugepages"] = {{"total", mem["HugePages_Total"]},
                     {"free", mem["HugePages_Free"]},
                     {"size_kb", mem["Hugepagesize"]},
                     {"transparent", thp ? json(*thp) : json(nullptr)}};
  r.line("(the efa provider takes its internal buffers from reserved huge pages when it can,");
  r.line(" FI_EFA_USE_HUGE_PAGE; shm and tcp do not need them)");

  // /dev/shm: where the shm provider maps its per-endpoint regions.
  struct statvfs sv {};
  if (statvfs("/dev/shm", &sv) == 0) {
    const double total = static_cast<double>(sv.f_blocks) * sv.f_frsize;
    const double avail = static_cast<double>(sv.f_bavail) * sv.f_frsize;
    r.fact("/dev/shm", fmt::format("{} total, {} free", format_bytes(total), format_bytes(avail)));
    js["dev_shm"] = {{"total_bytes", total}, {"free_bytes", avail}};
    if (total < 256.0 * 1024 * 1024)
      r.add(Level::kWarn, "system",
            fmt::format("/dev/shm is only {}: the shm provider maps a region per rank there; "
                        "containers default to 64 MiB (docker run --shm-size=1g or --ipc=host)",
                        format_bytes(total)));
  } else {
    r.add(Level::kWarn, "system",
          "/dev/shm is not mounted: the shm provider (same-node rail) needs it");
    js["dev_shm"] = nullptr;
  }

  // ptrace_scope and Cross Memory Attach.
  const auto scope_text = read_first_line("/proc/sys/kernel/yama/ptrace_scope");
  const auto scope_parsed = scope_text ? parse_int64(*scope_text) : std::nullopt;
  const bool has_scope = scope_parsed.has_value();
  const int64_t scope = scope_parsed.value_or(-1);
  r.fact("yama ptrace_scope",
         has_scope ? fmt::format("{}", scope) : std::string("(no Yama: ordinary same-user rules)"));
  r.line("(shm moves large messages with one copy through Cross Memory Attach,");
  r.line(" process_vm_readv/writev, which needs ptrace permission over the peer. Ranks are");
  r.line(" siblings, not ancestors: ptrace_scope 1 allows only ancestors, 2 only CAP_SYS_PTRACE,");
  r.line(" 3 nobody, so any value > 0 (or a seccomp profile that blocks the calls) makes shm");
  r.line(" fall back to copying twice through shared bounce buffers, at roughly half the speed)");
  js["ptrace_scope"] = has_scope ? json(scope) : json(nullptr);
  js["cma_single_copy"] = cma.empty();
  if (!cma.empty()) js["cma_error"] = cma;
  if (cma.empty()) {
    r.add(Level::kOk, "system", "shm single-copy (CMA) between sibling processes works");
  } else {
    r.add(Level::kWarn, "system",
          fmt::format("shm single-copy (CMA) between sibling processes is blocked ({}): large "
                      "same-node messages take the slower two-copy path. Fix: sysctl -w "
                      "kernel.yama.ptrace_scope=0, or give the ranks CAP_SYS_PTRACE (docker: "
                      "--cap-add SYS_PTRACE)",
                      cma));
  }
  j["system"] = js;
}

void section_fabric(Report& r, json& j, Facts& f) {
  r.section("libfabric");
  const std::string version = fabric::libfabric_version();
  f.providers = fabric::rdm_providers();
  for (const auto& p : f.providers) {
    if (p == "efa") f.efa_provider = true;
    if (p == "efa" || p.rfind("verbs", 0) == 0) f.rdma_provider = true;
  }
  r.fact("version", version);
  r.fact("tagged RDM providers", f.providers.empty() ? "none" : join(f.providers, ", "));
  r.line("(providers that offer a tagged RDM endpoint with the hints mics uses)");
  j["libfabric"] = {{"version", version}, {"rdm_providers", f.providers}};

  r.section("rails");
  json rails = json::object();
  for (fabric::Rail rail : {fabric::Rail::kIntra, fabric::Rail::kInter}) {
    const char* key = rail == fabric::Rail::kIntra ? "intra" : "inter";
    try {
      fabric::RailChoice choice = fabric::choose_rail(rail);
      r.add(Level::kOk, "rails",
            fmt::format("{} rail: {} (chosen by: {})", fabric::to_string(rail), choice.provider,
                        choice.reason));
      rails[key] = {{"ok", true}, {"provider", choice.provider}, {"reason", choice.reason}};
      if (rail == fabric::Rail::kInter) f.inter_rail_ok = true;
    } catch (const Error& e) {
      r.add(Level::kFail, "rails", fmt::format("{} rail: {}", fabric::to_string(rail), e.what()));
      rails[key] = {{"ok", false}, {"error", e.what()}};
    }
  }
  j["rails"] = rails;

  r.section("EFA");
  std::vector<std::string> devices, other_rdma;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/sys/class/infiniband", ec)) {
    const std::string name = entry.path().filename().string();
    (name.find("efa") != std::string::npos ? devices : other_rdma).push_back(name);
  }
  std::sort(devices.begin(), devices.end());
  std::sort(other_rdma.begin(), other_rdma.end());
  r.fact("efa provider", f.efa_provider ? "offered by libfabric" : "not offered by libfabric");
  r.fact("EFA devices", devices.empty() ? "none in /sys/class/infiniband" : join(devices, ", "));
  if (!other_rdma.empty()) r.fact("other RDMA devices", join(other_rdma, ", "));
  r.line("(on an EFA instance `fi_info -p efa -t FI_EP_RDM` must list the efa provider; the");
  r.line(" EFA installer puts its libfabric in /opt/amazon/efa: build mics against it with");
  r.line(" -DMICS_FABRIC_PREFIX=/opt/amazon/efa)");
  if (f.efa_provider) {
    r.add(Level::kOk, "efa", "EFA is usable through libfabric");
    if (f.hugepages_total == 0)
      r.add(Level::kNote, "efa",
            "no huge pages are reserved: the efa provider falls back to regular pages for its "
            "internal buffers (reserve some with sysctl vm.nr_hugepages, or leave it)");
  } else if (!devices.empty()) {
    r.add(Level::kWarn, "efa",
          "EFA devices exist but the libfabric mics loaded offers no efa provider: use the EFA "
          "installer's libfabric (MICS_FABRIC_PREFIX=/opt/amazon/efa, or LD_LIBRARY_PATH)");
  } else {
    r.add(Level::kNote, "efa", "no EFA on this host: the inter-node rail uses another provider");
  }
  j["efa"] = {{"provider", f.efa_provider},
              {"devices", devices},
              {"other_rdma_devices", other_rdma},
              {"check_command", "fi_info -p efa -t FI_EP_RDM"}};
}

void section_cuda(Report& r, json& j, const CudaInfo& c) {
  r.section("CUDA");
  json jc = {{"built", c.built_with_cuda}, {"nccl_built", c.built_with_nccl}};
  if (!c.built_with_cuda) {
    r.add(Level::kNote, "cuda",
          "this mics was built without CUDA (MICS_WITH_CUDA=OFF or no nvcc found): CPU only");
    j["cuda"] = jc;
    return;
  }
  const auto visible = env_raw("CUDA_VISIBLE_DEVICES");
  r.fact("runtime", cuda_version_text(c.runtime_version));
  r.fact("driver (CUDA it supports)",
         c.driver_version > 0 ? cuda_version_text(c.driver_version) : "none: " + c.driver_error);
  if (visible) r.fact("CUDA_VISIBLE_DEVICES", *visible);
  r.fact("devices", fmt::format("{}", c.device_count));
  json gpus = json::array();
  for (const auto& g : c.gpus) {
    r.line(fmt::format("  GPU {}: {}, sm_{}{}, {}, {} SMs, PCI {}", g.index, g.name, g.cc_major,
                       g.cc_minor, format_bytes(static_cast<double>(g.memory_bytes)),
                       g.multiprocessors, g.pci_bus_id.empty() ? "?" : g.pci_bus_id));
    gpus.push_back({{"index", g.index},
                    {"name", g.name},
                    {"compute_capability", fmt::format("{}.{}", g.cc_major, g.cc_minor)},
                    {"memory_bytes", g.memory_bytes},
                    {"multiprocessors", g.multiprocessors},
                    {"pci_bus_id", g.pci_bus_id}});
  }
  if (!c.gpu_error.empty()) r.add(Level::kNote, "cuda", c.gpu_error);
  if (c.driver_version > 0 && c.runtime_version > c.driver_version)
    r.add(Level::kWarn, "cuda",
          fmt::format("the driver supports CUDA {} but mics uses runtime {}: GPU work will fail "
                      "(cudaErrorInsufficientDriver); update the driver",
                      cuda_version_text(c.driver_version), cuda_version_text(c.runtime_version)));
  if (c.built_with_nccl) {
    r.fact("NCCL", c.nccl_version > 0 ? nccl_version_text(c.nccl_version) : c.nccl_error);
    if (c.nccl_version == 0) r.add(Level::kWarn, "cuda", "NCCL version unknown: " + c.nccl_error);
  } else {
    r.fact("NCCL", "not built (nccl.h/libnccl not found at configure time)");
  }
  if (c.built_with_cudnn && c.cudnn_version == 0)
    r.fact("cuDNN", c.cudnn_error + ": `mics train --device cuda` uses mics' own attention kernels");
  else if (c.built_with_cudnn)
    r.fact("cuDNN", fmt::format("{}.{}.{} (its fused SDPA is the attention of `mics train --device cuda`; "
                                "MICS_CUDA_CUDNN_ATTENTION=0: mics' own kernels)",
                                c.cudnn_version / 10000, c.cudnn_version / 100 % 100, c.cudnn_version % 100));
  else
    r.fact("cuDNN", "not built (cudnn_graph.h not found at configure time): mics' own attention kernels");
  jc["cudnn_version"] =
      c.cudnn_version > 0
          ? json(fmt::format("{}.{}.{}", c.cudnn_version / 10000, c.cudnn_version / 100 % 100, c.cudnn_version % 100))
          : json(nullptr);
  if (!c.cudnn_error.empty()) jc["cudnn_error"] = c.cudnn_error;
  // The kernel driver's own version (nvidia-smi's "Driver Version"), from the module.
  std::string kernel_driver;
  if (std::ifstream in("/sys/module/nvidia/version"); in) std::getline(in, kernel_driver);
  if (!kernel_driver.empty()) r.fact("driver (kernel module)", kernel_driver);
  jc["kernel_driver_version"] = kernel_driver.empty() ? json(nullptr) : json(kernel_driver);
  // What `mics train --device cuda` with several ranks uses for its GPU collectives here.
  const std::string mode = knobs().gpu_comm;
  std::string gpu_comm;
  if (mode == "fabric" || !c.built_with_nccl)
    gpu_comm = fmt::format("fabric ({}): device buffers staged through pinned host memory over the "
                           "libfabric rails; no GPUDirect RDMA on this path, so NCCL_NET_GDR_LEVEL "
                           "and FI_EFA_USE_DEVICE_RDMA do not change it",
                           mode == "fabric" ? "MICS_GPU_COMM=fabric" : "this build has no NCCL");
  else
    gpu_comm = fmt::format("MICS_GPU_COMM={}: NCCL when every rank has a GPU of its own (up to {} "
                           "rank{} on this host), else the fabric fallback through pinned host "
                           "memory (ranks sharing a GPU){}; NCCL_NET_GDR_LEVEL and "
                           "FI_EFA_USE_DEVICE_RDMA matter only to NCCL's network path across nodes",
                           mode, c.device_count, c.device_count == 1 ? "" : "s",
                           mode == "nccl" ? ", which MICS_GPU_COMM=nccl turns into an error" : "");
  r.fact("GPU collectives", gpu_comm);
  jc["gpu_comm"] = mode;
  jc["runtime_version"] =
      c.runtime_version > 0 ? json(cuda_version_text(c.runtime_version)) : json(nullptr);
  jc["driver_version"] =
      c.driver_version > 0 ? json(cuda_version_text(c.driver_version)) : json(nullptr);
  if (!c.driver_error.empty()) jc["driver_error"] = c.driver_error;
  jc["device_count"] = c.device_count;
  jc["devices"] = gpus;
  if (!c.gpu_error.empty()) jc["gpu_error"] = c.gpu_error;
  jc["cuda_visible_devices"] = visible ? json(*visible) : json(nullptr);
  if (c.built_with_nccl) {
    jc["nccl_version"] =
        c.nccl_version > 0 ? json(nccl_version_text(c.nccl_version)) : json(nullptr);
    if (!c.nccl_error.empty()) jc["nccl_error"] = c.nccl_error;
  }
  j["cuda"] = jc;
}

void section_environment(Report& r, json& j, const Facts& f) {
  r.section("environment (libfabric, EFA, NCCL)");
  json rows = json::array();
  for (const auto& s : env_specs()) {
    const bool set = env_set(s.name);
    const std::string value = set ? env_value(s.name) : "";
    r.line(fmt::format("{:<22} = {:<12} {}", s.name, set ? value : "(unset)", s.help));
    rows.push_back(
        {{"name", s.name}, {"value", set ? json(value) : json(nullptr)}, {"help", s.help}});
  }
  j["environment"] = rows;
  const size_t before = r.findings().size();
  check_environment(r, f);
  if (r.findings().size() == before) r.add(Level::kOk, "environment", "no inconsistencies found");

  r.section("mics knobs");
  std::istringstream knob_text(describe_knobs());
  std::string line;
  while (std::getline(knob_text, line)) r.line(trim(line));
  json knob_rows_json = json::array();
  for (const auto& row : knob_rows())
    knob_rows_json.push_back(
        {{"name", row.name}, {"value", row.value}, {"from_env", row.from_env}, {"help", row.help}});
  j["knobs"] = knob_rows_json;
}

int run_doctor(const std::string& json_path) {
  Report r;
  json j;
  Facts f;
  // The fork-based CMA probe runs first, before libfabric or CUDA can start threads.
  const std::string cma = probe_cma();
  f.cuda = query_cuda_info();
  section_mics(r, j, f.cuda);
  section_system(r, j, f, cma);
  section_fabric(r, j, f);
  section_cuda(r, j, f.cuda);
  section_environment(r, j, f);

  const int fails = r.count(Level::kFail);
  const int warns = r.count(Level::kWarn);
  const int notes = r.count(Level::kNote);
  const int status = fails > 0 ? 1 : 0;
  r.section("summary");
  if (fails > 0)
    r.line(fmt::format(
        "{} check{} FAILED, {} warning{}, {} note{}: mics cannot run jobs here "
        "until the failures are fixed",
        fails, fails == 1 ? "" : "s", warns, warns == 1 ? "" : "s", notes, notes == 1 ? "" : "s"));
  else
    r.line(fmt::format("all checks passed ({} warning{}, {} note{})", warns, warns == 1 ? "" : "s",
                       notes, notes == 1 ? "" : "s"));

  json checks = json::array();
  for (const auto& fi : r.findings())
    checks.push_back({{"level", lower(level_tag(fi.level))}, {"area", fi.area}, {"text", fi.text}});
  j["checks"] = checks;
  j["summary"] = {{"failures", fails},
                  {"warnings", warns},
                  {"notes", notes},
                  {"status", fails ? "fail" : (warns ? "warn" : "ok")},
                  {"exit_code", status}};

  if (json_path == "-") {
    std::cout << j.dump(2) << "\n";
  } else {
    if (!json_path.empty()) {
      std::ofstream out(json_path);
      const int open_errno = errno;
      if (out) out << j.dump(2) << "\n";
      if (!out)
        throw Error(ErrorKind::kIo,
                    fmt::format("cannot write '{}': {}", json_path, errno_text(open_errno)),
                    {.layer = "tools",
                     .where = "mics doctor --json",
                     .hint = "name a writable file, or '-' for stdout"});
    }
    std::cout << "mics doctor" << r.text();
    if (!json_path.empty()) std::cout << fmt::format("\nfacts written to {}\n", json_path);
  }
  std::cout.flush();
  return status;
}

}  // namespace

Runner add_doctor_command(CLI::App& app) {
  auto* sub = app.add_subcommand(
      "doctor", "Check the fabric, GPU and environment; explain the knobs and variables");
  auto json_path = std::make_shared<std::string>();
  sub->add_option("--json", *json_path,
                  "Also write the facts as JSON to FILE ('-': JSON alone on stdout)")
      ->type_name("FILE");
  sub->footer("Exit status: 0 when all checks pass or only warn; 1 when a rail has no provider.");
  return [json_path]() -> int { return run_doctor(*json_path); };
}

}  // namespace mics::tools
