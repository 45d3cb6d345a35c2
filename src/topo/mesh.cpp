#include "topo/mesh.hpp"

#include <algorithm>

#include <fmt/format.h>

#include "base/error.hpp"

namespace mics::topo {

namespace {

[[noreturn]] void bad_mesh(std::string message, std::string hint) {
  throw Error(ErrorKind::kInvalidArgument, std::move(message),
              {.layer = "topo", .where = "the rank mesh", .hint = std::move(hint)});
}

// The size and coordinate of dimension letter ch.
int dim_size(const MeshShape& m, char ch) {
  switch (ch) {
    case 't': return m.t;
    case 'p': return m.p;
    case 's': return m.s;
    default: return m.r;
  }
}
int& dim_coord(MeshCoord& c, char ch) {
  switch (ch) {
    case 't': return c.t;
    case 'p': return c.p;
    case 's': return c.s;
    default: return c.r;
  }
}

std::string join(const std::vector<std::string>& parts) {
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : ", ") + p;
  return out;
}

}  // namespace

std::string MeshShape::describe() const {
  return fmt::format("r={} p={} s={} t={} (order {})", r, p, s, t, order);
}

void check_order(const std::string& order) {
  std::string sorted = order;
  std::sort(sorted.begin(), sorted.end());
  if (sorted != "prst")
    bad_mesh(fmt::format("mesh order '{}' is not a permutation of the letters t, p, s, r", order),
             "name every dimension once, fastest-varying first; the default is tpsr (tensor inside a node)");
}

int mesh_rank(const MeshShape& mesh, const MeshCoord& coord) {
  MeshCoord c = coord;
  int rank = 0;
  for (auto it = mesh.order.rbegin(); it != mesh.order.rend(); ++it)
    rank = rank * dim_size(mesh, *it) + dim_coord(c, *it);
  return rank;
}

MeshCoord mesh_coord(const MeshShape& mesh, int rank) {
  MeshCoord c;
  for (char ch : mesh.order) {
    const int n = dim_size(mesh, ch);
    dim_coord(c, ch) = rank % n;
    rank /= n;
  }
  return c;
}

std::vector<std::string> valid_mesh_choices(int world, const MeshLimits& lim) {
  std::vector<std::string> out;
  for (int t = 1; t <= world; ++t) {
    if (world % t || lim.heads % t || lim.vocab % t) continue;
    for (int s = 1; s <= world / t; ++s)
      if ((world / t) % s == 0 && s <= lim.layers) out.push_back(fmt::format("t={} s={} (r*p={})", t, s, world / t / s));
  }
  return out;
}

int check_mesh(int world, int t, int s, const MeshLimits& lim) {
  const std::string valid = fmt::format("valid choices for {} ranks and this model (H{} V{} L{}): {}", world, lim.heads,
                                        lim.vocab, lim.layers, join(valid_mesh_choices(world, lim)));
  if (t < 1 || s < 1) bad_mesh(fmt::format("--tensor-parallel {} and --pipeline-parallel {} must be >= 1", t, s), valid);
  if (world % (t * s) != 0)
    bad_mesh(fmt::format("the mesh does not multiply to the world: t*s = {}*{} = {} does not divide N = {} "
                         "(N = r*p*s*t)", t, s, t * s, world),
             valid);
  if (lim.heads % t != 0)
    bad_mesh(fmt::format("--tensor-parallel {} does not divide the {} attention heads", t, lim.heads), valid);
  if (lim.vocab % t != 0)
    bad_mesh(fmt::format("--tensor-parallel {} does not divide the vocabulary V = {} (the embedding is split by "
                         "rows; no padding)", t, lim.vocab),
             valid);
  if (s > lim.layers)
    bad_mesh(fmt::format("--pipeline-parallel {} is more than the {} layers (every stage needs a block)", s, lim.layers),
             valid);
  return world / (t * s);
}

void check_sequence_parallel(int world, int t, int seq_len, const MeshLimits& lim) {
  std::vector<std::string> valid;
  for (int v = 2; v <= world; ++v)
    if (world % v == 0 && lim.heads % v == 0 && lim.vocab % v == 0 && seq_len % v == 0) valid.push_back(std::to_string(v));
  const std::string hint =
      valid.empty() ? fmt::format("no --tensor-parallel > 1 divides N = {}, the {} heads, V = {} and T = {}: choose a "
                                  "--seq-len with more divisors, or drop --sequence-parallel",
                                  world, lim.heads, lim.vocab, seq_len)
                    : fmt::format("valid --tensor-parallel for {} ranks, this model (H{} V{}) and T = {}: {} (or change "
                                  "--seq-len, or drop --sequence-parallel)",
                                  world, lim.heads, lim.vocab, seq_len, join(valid));
  if (t < 2)
    bad_mesh("--sequence-parallel needs --tensor-parallel > 1 (it splits the sequence over the tensor ranks)", hint);
  if (seq_len % t != 0)
    bad_mesh(fmt::format("--sequence-parallel: T = {} positions do not split evenly over --tensor-parallel {}", seq_len, t),
             hint);
}

Mesh build_mesh(comm::Communicator& world, const MeshShape& shape) {
  check_order(shape.order);
  if (shape.size() != world.size())
    bad_mesh(fmt::format("mesh {} has {} ranks but the world has {}", shape.describe(), shape.size(), world.size()),
             "r*p*s*t must equal the number of ranks");
  Mesh m;
  m.shape = shape;
  m.me = mesh_coord(shape, world.rank());
  const MeshCoord& c = m.me;
  const int d = c.data(shape);
  // Colors: the coordinates the group shares; keys: the order inside it.
  m.tensor = world.split((c.r * shape.p + c.p) * shape.s + c.s, c.t, "tensor");
  m.pipeline = world.split((c.r * shape.p + c.p) * shape.t + c.t, c.s, "pipeline");
  m.data = world.split(c.s * shape.t + c.t, d, "data");
  m.model = world.split(d, c.s * shape.t + c.t, "model");
  const bool end_stage = shape.s > 1 && (c.s == 0 || c.s == shape.s - 1);
  m.tied = world.split(end_stage ? (c.r * shape.p + c.p) * shape.t + c.t : -1, c.s, "tied-embedding");
  m.control = world.split(0, world.rank(), "mesh-control");
  return m;
}

StageLayers stage_layers(int layers, int stages, int stage) {
  const int base = layers / stages, extra = layers % stages;
  StageLayers sl;
  sl.count = base + (stage < extra ? 1 : 0);
  sl.first = stage * base + std::min(stage, extra);
  return sl;
}

}  // namespace mics::topo
