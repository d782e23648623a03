// benchmarks/echo_server.py in C++ (grpc++ callback API): what a native gRPC front would pay for
// a round trip on this machine, beside grpc.aio's. Same method and requests: an 8-byte
// little-endian double keeps the handler busy (a spin, touching no memory) that many seconds
// and answers empty; anything else is echoed. Prints "port N" once listening.
//   echo   (benchmarks.native builds and runs it)
#include <chrono>
#include <cstring>
#include <string>

#include "unary.h"

namespace {

bool Echo(const std::string& request, std::string* response) {
  if (request.size() != sizeof(double)) {
    *response = request;
    return true;
  }
  double seconds;
  std::memcpy(&seconds, request.data(), sizeof seconds);
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < end) {
  }
  response->clear();
  return true;
}

}  // namespace

int main() { return native::Serve("/bench.Echo/Echo", Echo); }
