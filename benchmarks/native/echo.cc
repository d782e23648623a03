// benchmarks/echo_server.py in C++ (grpc++ callback API): what a native gRPC front would pay for
// a round trip on this machine, beside grpc.aio's. Same method and requests: an 8-byte
// little-endian double keeps the handler busy (a spin, touching no memory) that many seconds
// and answers empty; anything else is echoed. Prints "port N" once listening.
//   benchmarks/native_echo/build.sh OUT && OUT   (benchmarks.native_echo builds and runs it)
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/server_callback.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

namespace {

void Spin(double seconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < end) {
  }
}

// One call: read the request, answer it, finish (the generic API sees every call as a stream).
class EchoCall : public grpc::ServerGenericBidiReactor {
 public:
  explicit EchoCall(grpc::GenericCallbackServerContext* context) {
    if (context->method() != "/bench.Echo/Echo") {
      Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "only /bench.Echo/Echo"));
      return;
    }
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no request"));
      return;
    }
    std::vector<grpc::Slice> slices;
    (void)request_.Dump(&slices);
    std::string bytes;
    for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    if (bytes.size() == sizeof(double)) {
      double seconds;
      std::memcpy(&seconds, bytes.data(), sizeof seconds);
      Spin(seconds);
      bytes.clear();
    }
    grpc::Slice slice(bytes);
    response_ = grpc::ByteBuffer(&slice, 1);
    StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK);
  }

  void OnDone() override { delete this; }

 private:
  grpc::ByteBuffer request_, response_;
};

class EchoService : public grpc::CallbackGenericService {
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override {
    return new EchoCall(ctx);
  }
};

}  // namespace

int main() {
  EchoService service;
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterCallbackGenericService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    std::fprintf(stderr, "native echo: could not listen\n");
    return 1;
  }
  std::printf("port %d\n", port);
  std::fflush(stdout);
  server->Wait();
  return 0;
}
