// A native gRPC front in its least form: the transport in C++ (grpc++ callback API), the work of
// benchmarks/floor_server.py (decode, WordEmbedder.embed's stages, encode) in an embedded
// interpreter, called once per Embed with the request's bytes. serving_path times it beside
// the Python floor: what moving only the gRPC handling out of Python would buy.
//   front MODEL_DIR   (benchmarks.native builds and runs it; prints "port N" once listening)
#include <Python.h>  // first, as Python asks

#include <cstdio>
#include <string>

#include "unary.h"

namespace {

PyObject* g_handler = nullptr;  // benchmarks.floor_server.bytes_handler(MODEL_DIR)

// The handler's answer; false (the Python error printed) if it raised or returned no bytes.
bool Embed(const std::string& request, std::string* response) {
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
  PyEval_SaveThread();  // grpc's threads take the interpreter lock per call
  return native::Serve("/ctxembed.v1.WordEmbedder/Embed", Embed);
}
