#pragma once
// The public C++ API of mics, in one include:
//   mics::comm::Runtime   join the job (mics launch, Slurm, Open MPI), open the fabric rails,
//                         and get the world communicator (comm/runtime.hpp);
//   mics::topo            strategies and MiCS partition / replication groups (topo/groups.hpp);
//   mics::shard::Engine   shard a model of your own: declare units, finalize, then gather,
//                         release, hand back gradients and step (shard/engine.hpp).
// Errors are mics::Error (base/error.hpp), whose what() names the layer, the operation and
// what to do about it. examples/train_mlp.cpp is a complete program built on this header.
#include "base/error.hpp"
#include "comm/runtime.hpp"
#include "shard/engine.hpp"
#include "topo/groups.hpp"
