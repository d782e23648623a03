// A native gRPC front in its least form: the transport in C++ (grpc++ callback API), the work of
// benchmarks/floor_server.py (decode, WordEmbedder.embed's stages, encode) in an embedded
// interpreter, called once per Embed with the request's bytes. serving_path times it beside
// the Python floor: what moving only the gRPC handling out of Python would buy.
//   front MODEL_DIR   (benchmarks.native builds and runs it; prints "port N" once listening)
#include <Python.h>  // first, as Python asks
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/server_callback.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

namespace {

PyObject* g_handler = nullptr;  // benchmarks.floor_server.bytes_handler(MODEL_DIR)

// The handler's answer to one request's bytes; false (the Python error printed) if it raised.
bool Handle(const std::string& request, std::string* response) {
  PyGILState_STATE gil = PyGILState_Ensure();
  PyObject* arg = PyBytes_FromStringAndSize(request.data(), request.size());
  PyObject* out = arg ? PyObject_CallOneArg(g_handler, arg) : nullptr;
  Py_XDECREF(arg);
  const bool ok = out != nullptr && PyBytes_Check(out);
  if (ok) {
    response->assign(PyBytes_AS_STRING(out), PyBytes_GET_SIZE(out));
  } else if (PyErr_Occurred()) {
    PyErr_Print();
  }
  Py_XDECREF(out);
  PyGILState_Release(gil);
  return ok;
}

class EmbedCall : public grpc::ServerGenericBidiReactor {
 public:
  explicit EmbedCall(grpc::GenericCallbackServerContext* context) {
    if (context->method() != "/ctxembed.v1.WordEmbedder/Embed") {
      Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "only Embed"));
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
    std::string bytes, answer;
    for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    if (!Handle(bytes, &answer)) {
      Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the handler raised"));
      return;
    }
    grpc::Slice slice(answer);
    response_ = grpc::ByteBuffer(&slice, 1);
    StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK);
  }

  void OnDone() override { delete this; }

 private:
  grpc::ByteBuffer request_, response_;
};

class FrontService : public grpc::CallbackGenericService {
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override {
    return new EmbedCall(ctx);
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: front MODEL_DIR\n");
    return 2;
  }
  Py_Initialize();
  PyObject* module = PyImport_ImportModule("benchmarks.floor_server");
  PyObject* make = module ? PyObject_GetAttrString(module, "bytes_handler") : nullptr;
  g_handler = make ? PyObject_CallFunction(make, "s", argv[1]) : nullptr;
  if (g_handler == nullptr) {
    PyErr_Print();
    return 1;
  }
  PyThreadState* main_thread = PyEval_SaveThread();  // grpc's threads take the GIL per call
  FrontService service;
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterCallbackGenericService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    std::fprintf(stderr, "front: could not listen\n");
    return 1;
  }
  std::printf("port %d\n", port);
  std::fflush(stdout);
  server->Wait();
  PyEval_RestoreThread(main_thread);
  return 0;
}
