// The rendezvous store: operations from many threads, waiting and barriers, and every way a
// peer can misbehave (wrong token, garbage, garbled replies, nobody listening, store gone).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "base/clock.hpp"
#include "base/error.hpp"
#include "bootstrap/store.hpp"
#include "bootstrap/wire.hpp"

namespace mics::bootstrap {
namespace {

const std::string kToken = "test-token";

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// A listening socket on 127.0.0.1 that the test drives by hand (a fake store).
struct RawListener {
  int fd = -1;
  int port = 0;
  RawListener() {
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)), 0);
    EXPECT_EQ(listen(fd, 16), 0);
    socklen_t len = sizeof(sin);
    getsockname(fd, reinterpret_cast<sockaddr*>(&sin), &len);
    port = ntohs(sin.sin_port);
  }
  ~RawListener() { close(fd); }
};

int connect_raw(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sin.sin_port = htons(static_cast<uint16_t>(port));
  EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)), 0);
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

void send_raw(int fd, const std::string& bytes) {
  ASSERT_EQ(send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL), static_cast<ssize_t>(bytes.size()));
}

// Reads until EOF (or 5 s): what the server said before closing.
std::string read_to_eof(int fd) {
  std::string all;
  char buf[4096];
  while (true) {
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    all.append(buf, static_cast<size_t>(n));
  }
  return all;
}

// The reply the server sends before closing a misbehaving client: one ERROR frame.
void expect_error_then_close(int fd) {
  const std::string reply = read_to_eof(fd);
  ASSERT_GE(reply.size(), wire::kHeaderBytes + 1);
  const wire::Header h = wire::parse_header(reply.data());
  EXPECT_EQ(h.magic, wire::kMagic);
  EXPECT_EQ(static_cast<uint8_t>(reply[wire::kHeaderBytes]),
            static_cast<uint8_t>(wire::Op::kError));
  close(fd);
}

int free_port() {
  RawListener l;
  return l.port;
}

TEST(Store, SetGetAddFromManyThreads) {
  StoreServer server("127.0.0.1", 0, kToken);
  constexpr int kThreads = 8;
  std::vector<std::thread> threads;
  std::vector<std::string> seen(kThreads);
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      try {
        StoreClient client("127.0.0.1", server.port(), kToken, 10);
        client.set("key/" + std::to_string(t), "value " + std::to_string(t));
        for (int i = 0; i < 50; ++i) client.add("counter", 1);
        client.barrier("after-add", kThreads);
        std::string all;
        for (int u = 0; u < kThreads; ++u) all += client.get("key/" + std::to_string(u)) + ";";
        seen[t] = all;
        if (client.add("counter", 0) != kThreads * 50) ++failures;
      } catch (const std::exception& e) {
        ADD_FAILURE() << e.what();
        ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  for (int t = 0; t < kThreads; ++t)
    EXPECT_EQ(seen[t], "value 0;value 1;value 2;value 3;value 4;value 5;value 6;value 7;");
}

TEST(Store, TryGetAddAndGetMany) {
  StoreServer server("127.0.0.1", 0, kToken);
  StoreClient client("127.0.0.1", server.port(), kToken, 5);
  EXPECT_FALSE(client.try_get("absent").has_value());
  client.set("k", "");
  EXPECT_EQ(client.try_get("k"), std::string());
  client.set("k", std::string("bin\0ary", 7));
  EXPECT_EQ(client.get("k"), std::string("bin\0ary", 7));
  EXPECT_EQ(client.add("n", 5), 5);
  EXPECT_EQ(client.add("n", -7), -2);
  EXPECT_EQ(client.get_many({"n", "k"}),
            (std::vector<std::string>{"-2", std::string("bin\0ary", 7)}));
  MissingKeys m = client.missing({"n", "x", "y"});
  EXPECT_EQ(m.total, 2u);
  EXPECT_EQ(m.listed, (std::vector<std::string>{"x", "y"}));
  // ADD on a non-integer is refused, and the connection stays usable.
  try {
    client.add("k", 1);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kProtocol);
    EXPECT_TRUE(contains(e.what(), "not an integer")) << e.what();
  }
  EXPECT_EQ(client.add("n", 2), 0);
}

TEST(Store, LargeValuesAndTheSizeLimit) {
  StoreServer server("127.0.0.1", 0, kToken);
  StoreClient client("127.0.0.1", server.port(), kToken, 10);
  std::string big(2 << 20, 'v');
  big[12345] = 'w';
  client.set("big", big);
  EXPECT_EQ(client.get("big"), big);
  try {
    client.set("huge", std::string(wire::kMaxFrameBytes, 'x'));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_TRUE(contains(e.what(), "larger than the store's limit")) << e.what();
  }
  client.set("after", "ok");  // nothing was sent: the connection is fine
  EXPECT_EQ(client.get("after"), "ok");
}

TEST(Store, GetBlocksUntilAnotherClientSets) {
  StoreServer server("127.0.0.1", 0, kToken);
  StoreClient reader("127.0.0.1", server.port(), kToken, 10);
  std::thread writer([&] {
    StoreClient w("127.0.0.1", server.port(), kToken, 10);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    w.set("late", "here");
  });
  const auto t0 = Clock::now();
  EXPECT_EQ(reader.get("late"), "here");
  EXPECT_GE(seconds_since(t0), 0.05);
  writer.join();
  reader.wait({"late"});  // present: returns at once
}

TEST(Store, WaitTimesOutNamingTheMissingKeys) {
  StoreServer server("127.0.0.1", 0, kToken);
  StoreClient client("127.0.0.1", server.port(), kToken, 0.3);
  client.set("a", "1");
  const auto t0 = Clock::now();
  try {
    client.wait({"a", "b"});
    FAIL() << "expected a timeout";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kTimeout);
    EXPECT_TRUE(contains(e.what(), "'b'")) << e.what();
    EXPECT_FALSE(contains(e.what(), "'a'")) << e.what();
    EXPECT_TRUE(contains(e.what(), "127.0.0.1:" + std::to_string(server.port()))) << e.what();
  }
  EXPECT_LT(seconds_since(t0), 2.0);
  // The connection is still good after a timed-out wait.
  client.set("b", "2");
  EXPECT_EQ(client.get("b"), "2");
  try {
    client.get("never");
    FAIL() << "expected a timeout";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kTimeout);
    EXPECT_TRUE(contains(e.what(), "'never'")) << e.what();
  }
}

TEST(Store, BarrierTimeoutNamesTheMissingRanks) {
  StoreServer server("127.0.0.1", 0, kToken);
  std::vector<std::thread> threads;
  std::vector<std::string> messages(3);
  std::vector<int> peers(3, -1);
  for (int r = 0; r < 3; ++r) {  // rank 3 of 4 never comes
    threads.emplace_back([&, r] {
      StoreClient client("127.0.0.1", server.port(), kToken, 0.5);
      client.set_identity(r, 4);
      try {
        client.barrier("start", 4);
      } catch (const Error& e) {
        messages[r] = e.what();
        peers[r] = e.context().peer.value_or(-1);
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int r = 0; r < 3; ++r) {
    EXPECT_TRUE(contains(messages[r], "3 of 4 arrived")) << messages[r];
    EXPECT_TRUE(contains(messages[r], "missing ranks: 3")) << messages[r];
    EXPECT_EQ(peers[r], 3);
  }
}

TEST(Store, BarrierReleasesEveryoneAndNamesAreSeparate) {
  StoreServer server("127.0.0.1", 0, kToken);
  constexpr int kThreads = 4;
  std::atomic<int> before{0};
  std::atomic<bool> early{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      StoreClient client("127.0.0.1", server.port(), kToken, 10);
      client.set_identity(t, kThreads);
      for (int round = 0; round < 3; ++round) {
        before.fetch_add(1);
        client.barrier("round" + std::to_string(round), kThreads);
        if (before.load() < (round + 1) * kThreads) early = true;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_FALSE(early.load());
}

TEST(Store, WrongTokenIsRejectedClearly) {
  StoreServer server("127.0.0.1", 0, kToken);
  const auto t0 = Clock::now();
  try {
    StoreClient client("127.0.0.1", server.port(), "another-job", 10);
    FAIL() << "expected the token to be rejected";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kProtocol);
    EXPECT_TRUE(contains(
        e.what(), "job token rejected by store at 127.0.0.1:" + std::to_string(server.port())))
        << e.what();
    EXPECT_TRUE(contains(e.context().hint, "MICS_JOB_TOKEN")) << e.what();
  }
  EXPECT_LT(seconds_since(t0), 2.0);  // no retrying a refusal
}

TEST(Store, ServerSurvivesGarbage) {
  StoreServer server("127.0.0.1", 0, kToken);
  // Not our protocol at all.
  int fd = connect_raw(server.port());
  send_raw(fd, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  expect_error_then_close(fd);
  // Right magic, absurd length.
  fd = connect_raw(server.port());
  send_raw(fd, std::string("SCIM\xff\xff\xff\x7f", 8));
  expect_error_then_close(fd);
  // A valid HELLO, then an unknown opcode.
  fd = connect_raw(server.port());
  send_raw(fd, wire::Writer(wire::Op::kHello).u32(wire::kVersion).str(kToken).frame() +
                   wire::Writer(static_cast<wire::Op>(0x42)).str("x").frame());
  {
    const std::string reply = read_to_eof(fd);
    // OK to the HELLO, then an ERROR frame, then EOF.
    ASSERT_GE(reply.size(), 2 * wire::kHeaderBytes + 2);
    EXPECT_EQ(static_cast<uint8_t>(reply[wire::kHeaderBytes]), static_cast<uint8_t>(wire::Op::kOk));
    EXPECT_EQ(static_cast<uint8_t>(reply[2 * wire::kHeaderBytes + 1]),
              static_cast<uint8_t>(wire::Op::kError));
    close(fd);
  }
  // A SET whose strings run past the frame.
  fd = connect_raw(server.port());
  send_raw(fd, wire::Writer(wire::Op::kHello).u32(wire::kVersion).str(kToken).frame() +
                   wire::Writer(wire::Op::kSet).u32(1000).frame());
  read_to_eof(fd);
  close(fd);
  // Half a frame, then a hang-up; and a connection that says nothing at all.
  fd = connect_raw(server.port());
  send_raw(fd, std::string("SCIM\x10\x00", 6));
  close(fd);
  int silent = connect_raw(server.port());
  // A WAIT with a key count far beyond the frame.
  fd = connect_raw(server.port());
  send_raw(fd, wire::Writer(wire::Op::kHello).u32(wire::kVersion).str(kToken).frame() +
                   wire::Writer(wire::Op::kWait).i64(1000).u32(0xffffffffu).frame());
  read_to_eof(fd);
  close(fd);

  // Real clients are still served.
  StoreClient client("127.0.0.1", server.port(), kToken, 5);
  client.set("still", "alive");
  EXPECT_EQ(client.get("still"), "alive");
  close(silent);
}

TEST(Store, GarbledReplyIsAProtocolError) {
  RawListener fake;
  std::thread server([&] {
    int c = accept(fake.fd, nullptr, nullptr);
    char buf[256];
    (void)!recv(c, buf, sizeof(buf), 0);
    const std::string junk = "HTTP/1.1 400 Bad Request\r\n\r\n";
    (void)!send(c, junk.data(), junk.size(), MSG_NOSIGNAL);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    close(c);
  });
  try {
    StoreClient client("127.0.0.1", fake.port, kToken, 5);
    FAIL() << "expected a protocol error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kProtocol);
    EXPECT_TRUE(contains(e.what(), "does not speak the mics store protocol")) << e.what();
  }
  server.join();

  // A store that answers HELLO properly, then garbage.
  std::thread server2([&] {
    int c = accept(fake.fd, nullptr, nullptr);
    char buf[256];
    (void)!recv(c, buf, sizeof(buf), 0);
    const std::string ok = wire::Writer(wire::Op::kOk).frame();
    (void)!send(c, ok.data(), ok.size(), MSG_NOSIGNAL);
    (void)!recv(c, buf, sizeof(buf), 0);
    const std::string junk = "\x01\x02\x03\x04\x05\x06\x07\x08garbage";
    (void)!send(c, junk.data(), junk.size(), MSG_NOSIGNAL);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    close(c);
  });
  StoreClient client("127.0.0.1", fake.port, kToken, 5);
  try {
    client.set("k", "v");
    FAIL() << "expected a protocol error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kProtocol);
    EXPECT_TRUE(contains(e.what(), "garbled reply")) << e.what();
  }
  server2.join();
  // Later calls fail fast instead of reading the rest of the garbage.
  EXPECT_THROW(client.set("k", "v"), Error);
}

TEST(Store, UnreachableStoreFailsWithinTheDeadline) {
  const int port = free_port();  // nobody listens there any more
  const auto t0 = Clock::now();
  try {
    StoreClient client("127.0.0.1", port, kToken, 0.5);
    FAIL() << "expected a timeout";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kTimeout);
    EXPECT_TRUE(contains(e.what(), "127.0.0.1:" + std::to_string(port))) << e.what();
    EXPECT_TRUE(contains(e.what(), "refused")) << e.what();
    EXPECT_TRUE(contains(e.context().hint, "MICS_MASTER_ADDR")) << e.what();
  }
  const double elapsed = seconds_since(t0);
  EXPECT_GE(elapsed, 0.45);
  EXPECT_LT(elapsed, 2.0);
}

TEST(Store, SilentListenerTimesOut) {
  RawListener fake;  // the kernel accepts, nobody ever answers
  const auto t0 = Clock::now();
  EXPECT_THROW(StoreClient("127.0.0.1", fake.port, kToken, 0.5), Error);
  EXPECT_LT(seconds_since(t0), 2.0);
}

TEST(Store, ClientConnectsToAServerThatStartsLater) {
  const int port = free_port();
  std::thread late([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    StoreServer server("127.0.0.1", port, kToken);
    StoreClient c("127.0.0.1", port, kToken, 5);
    c.wait({"done"});
  });
  StoreClient client("127.0.0.1", port, kToken, 5);
  client.set("done", "");
  late.join();
}

TEST(Store, ServerGoneIsAPeerFailure) {
  auto server = std::make_unique<StoreServer>("127.0.0.1", 0, kToken);
  StoreClient client("127.0.0.1", server->port(), kToken, 5);
  client.set("k", "v");
  server.reset();
  try {
    client.set("k", "v");
    client.set("k", "v");  // the first may still be buffered by the kernel
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kPeerFailure) << e.what();
    EXPECT_TRUE(contains(e.what(), "closed the connection") || contains(e.what(), "broke"))
        << e.what();
  }
}

TEST(Store, PortInUseIsReported) {
  StoreServer first("127.0.0.1", 0, kToken);
  try {
    StoreServer second("127.0.0.1", first.port(), kToken);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnavailable);
    EXPECT_TRUE(contains(e.what(), "in use")) << e.what();
  }
}

}  // namespace
}  // namespace mics::bootstrap
