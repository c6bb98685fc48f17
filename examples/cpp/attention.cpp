// Scaled dot-product attention (kernel mode) in C++17 with no dependencies, wired into
// attention-conformance through the external protocol's oneshot mode: one run per case,
// metadata from case.txt (no JSON parser needed), arrays as .npy files.
//
//   g++ -O2 -std=c++17 -o examples/cpp/attention examples/cpp/attention.cpp
//   conformance run specs/basic.yaml --adapter examples/cpp/attention.adapter.yaml
//
//   ./attention --describe   prints the hello line (this implementation's declaration)
//   ./attention CASE_DIR     reads CASE_DIR/case.txt, q.npy, k.npy, v.npy, mask.npy;
//                            writes output.npy (and weights.npy / weights_mean.npy);
//                            exit 0, or 3 (unsupported, reason on stderr), or 1 (error)
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

static const char* HELLO =
    R"({"protocol": "attention-conformance/1", "name": "cpp.example.sdpa", )"
    R"("summary": "examples/cpp/attention.cpp: scaled dot-product attention in C++17", )"
    R"("framework": "c++", "mask": "additive", "dtypes": ["float64", "float32"], )"
    R"("features": ["kernel", "kv-len", "value-dim", "grouped-query", "multi-query", )"
    R"("causal", "causal-top-left", "causal-bottom-right", "key-padding", "query-padding", )"
    R"("bool-mask", "per-head-mask", "additive-mask", "attn-bias", "window", )"
    R"("fully-masked-rows", "scale", "weights", "weights-mean"]})";

struct Array {
  std::vector<size_t> shape;
  std::vector<double> data;
};

// .npy format 1.0-3.0, C order, little-endian host; <f8, <f4 and |b1 are what this reads.
static Array read_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  char magic[8];
  in.read(magic, 8);
  if (std::memcmp(magic, "\x93NUMPY", 6) != 0) throw std::runtime_error(path + ": not .npy");
  uint32_t length = 0;
  if (magic[6] == 1) {
    uint16_t short_length = 0;
    in.read(reinterpret_cast<char*>(&short_length), 2);
    length = short_length;
  } else {
    in.read(reinterpret_cast<char*>(&length), 4);
  }
  std::string header(length, ' ');
  in.read(&header[0], length);
  size_t at = header.find("'descr'");
  at = header.find('\'', header.find(':', at)) + 1;
  std::string descr = header.substr(at, header.find('\'', at) - at);
  if (header.find("'fortran_order': True") != std::string::npos)
    throw std::runtime_error(path + ": Fortran order");
  Array array;
  std::stringstream dims(header.substr(header.find('(') + 1,
                                       header.find(')') - header.find('(') - 1));
  std::string item;
  size_t count = 1;
  while (std::getline(dims, item, ',')) {
    if (item.find_first_not_of(' ') == std::string::npos) continue;
    array.shape.push_back(std::stoul(item));
    count *= array.shape.back();
  }
  array.data.resize(count);
  for (size_t i = 0; i < count; i++) {
    if (descr == "<f8") {
      double x;
      in.read(reinterpret_cast<char*>(&x), 8);
      array.data[i] = x;
    } else if (descr == "<f4") {
      float x;
      in.read(reinterpret_cast<char*>(&x), 4);
      array.data[i] = x;
    } else if (descr == "|b1") {
      char x;
      in.read(&x, 1);
      array.data[i] = x ? 1.0 : 0.0;
    } else {
      throw std::runtime_error(path + ": unsupported dtype " + descr);
    }
  }
  return array;
}

static void write_npy(const std::string& path, const std::vector<size_t>& shape,
                      const std::vector<double>& data) {
  std::string dims;
  for (size_t d : shape) dims += std::to_string(d) + ", ";
  std::string header = "{'descr': '<f8', 'fortran_order': False, 'shape': (" + dims + "), }";
  header += std::string((64 - (10 + header.size() + 1) % 64) % 64, ' ') + "\n";
  std::ofstream out(path, std::ios::binary);
  out.write("\x93NUMPY\x01\x00", 8);
  uint16_t length = static_cast<uint16_t>(header.size());
  out.write(reinterpret_cast<const char*>(&length), 2);
  out << header;
  out.write(reinterpret_cast<const char*>(data.data()), data.size() * sizeof(double));
}

int main(int argc, char** argv) {
  if (argc == 2 && std::string(argv[1]) == "--describe") {
    std::cout << HELLO << std::endl;
    return 0;
  }
  if (argc != 2) {
    std::cerr << "usage: attention CASE_DIR | --describe" << std::endl;
    return 1;
  }
  const std::string dir = std::string(argv[1]) + "/";
  try {
    std::map<std::string, std::string> meta;  // case.txt: one "key value" per line
    std::ifstream lines(dir + "case.txt");
    std::string line;
    while (std::getline(lines, line)) {
      size_t space = line.find(' ');
      meta[line.substr(0, space)] = space == std::string::npos ? "" : line.substr(space + 1);
    }
    if (meta["mode"] != "kernel") {
      std::cerr << "this example implements kernel mode only" << std::endl;
      return 3;
    }
    Array q = read_npy(dir + "q.npy"), k = read_npy(dir + "k.npy"), v = read_npy(dir + "v.npy");
    const bool masked = meta["mask"] != "none";
    Array mask = masked ? read_npy(dir + "mask.npy") : Array{};
    const double scale = std::stod(meta["scale"]);
    const size_t B = q.shape[0], H = q.shape[1], T = q.shape[2], K = q.shape[3];
    const size_t G = k.shape[1], S = k.shape[2], V = v.shape[3];
    std::vector<double> out(B * H * T * V, 0.0), weights(B * H * T * S), mean(B * T * S, 0.0);
    for (size_t b = 0; b < B; b++)
      for (size_t h = 0; h < H; h++)
        for (size_t t = 0; t < T; t++) {
          const size_t g = h / (H / G);  // query head h reads key/value head h / (H/G)
          const size_t row = ((b * H + h) * T + t) * S;
          double peak = -std::numeric_limits<double>::infinity();
          for (size_t s = 0; s < S; s++) {
            double dot = 0.0;
            for (size_t i = 0; i < K; i++)
              dot += q.data[((b * H + h) * T + t) * K + i] * k.data[((b * G + g) * S + s) * K + i];
            weights[row + s] = dot * scale + (masked ? mask.data[row + s] : 0.0);
            peak = std::max(peak, weights[row + s]);
          }
          double total = 0.0;  // every key -inf: -inf - -inf = NaN, the row is NaN
          for (size_t s = 0; s < S; s++) total += weights[row + s] = std::exp(weights[row + s] - peak);
          for (size_t s = 0; s < S; s++) {
            weights[row + s] /= total;
            mean[(b * T + t) * S + s] += weights[row + s] / H;
            for (size_t i = 0; i < V; i++)
              out[((b * H + h) * T + t) * V + i] +=
                  weights[row + s] * v.data[((b * G + g) * S + s) * V + i];
          }
        }
    write_npy(dir + "output.npy", {B, H, T, V}, out);
    const std::string compare = " " + meta["compare"] + " ";
    if (compare.find(" weights ") != std::string::npos)
      write_npy(dir + "weights.npy", {B, H, T, S}, weights);
    if (compare.find(" weights_mean ") != std::string::npos)
      write_npy(dir + "weights_mean.npy", {B, T, S}, mean);
    return 0;
  } catch (const std::exception& error) {
    std::cerr << error.what() << std::endl;
    return 1;
  }
}
