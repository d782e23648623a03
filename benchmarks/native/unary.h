// One unary method on grpc++'s generic callback API, shared by echo.cc and front.cc: read the
// request's bytes, answer them with Handle, finish; Serve listens on 127.0.0.1 (a free port),
// prints "port N" once listening and serves until killed.
#pragma once

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/server_callback.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

namespace native {

// The answer to one request's bytes; false: the call ends INVALID_ARGUMENT.
using Handle = bool (*)(const std::string& request, std::string* response);

class UnaryCall : public grpc::ServerGenericBidiReactor {
 public:
  UnaryCall(grpc::GenericCallbackServerContext* context, const std::string& method, Handle handle)
      : handle_(handle) {
    if (context->method() != method) {
      Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "only " + method));
      return;
    }
    StartRead(&request_);  // the generic API sees every call as a stream
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no request"));
      return;
    }
    std::vector<grpc::Slice> slices;
    (void)request_.Dump(&slices);
    std::string bytes, answer;
    for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    if (!handle_(bytes, &answer)) {
      Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the handler failed"));
      return;
    }
    grpc::Slice slice(answer);
    response_ = grpc::ByteBuffer(&slice, 1);
    StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK);
  }

  void OnDone() override { delete this; }

 private:
  Handle handle_;
  grpc::ByteBuffer request_, response_;
};

class UnaryService : public grpc::CallbackGenericService {
 public:
  UnaryService(std::string method, Handle handle) : method_(std::move(method)), handle_(handle) {}

  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override {
    return new UnaryCall(ctx, method_, handle_);
  }

 private:
  std::string method_;
  Handle handle_;
};

inline int Serve(const std::string& method, Handle handle) {
  UnaryService service(method, handle);
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterCallbackGenericService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    std::fprintf(stderr, "%s: could not listen\n", method.c_str());
    return 1;
  }
  std::printf("port %d\n", port);
  std::fflush(stdout);
  server->Wait();
  return 0;
}

}  // namespace native
