/* ctxembed's fused kernels for onnxruntime's CPU provider (a custom-op library).
 *
 * The export wraps chains of onnxruntime's small operators as ONNX functions of the `ctxembed`
 * domain (export/ctxembed/export/fused_chains.py). Registered, this library runs each as one
 * kernel; unregistered, onnxruntime inlines the functions' standard bodies. The int8 chains
 * keep the same float operations in the same order (no fused multiply-add): their results are
 * the functions' bit for bit.
 *
 * The `outlier` int8 scheme (docs/int8.md): each int8 product runs between two chains.
 *   RowQuantize(x[..., K], inlier_scale[K], floor, qscale, zero_point[, outlier_channels[M]])
 *     -> q (uint8 [..., K]), row (float [..., 1])[, outliers (float [..., M])]
 *     v = x * inlier_scale; row = max(max|v|, floor); q = sat(rne(clamp(v / row / qscale)) + zp)
 *   RowDequantize(acc (int32 [..., N]), col_scale[N], row[..., 1][, outlier_part[..., N]])
 *     -> y = float(acc) * col_scale * row [+ outlier_part]
 * Every graph: onnxruntime's SkipLayerNormalization (one at a time, its CPU kernel is among
 * the slowest per element). Its sums are reassociated here, so it agrees to float rounding only.
 *   SkipLayerNorm(x[..., H], skip, gamma[H], beta[H][, bias[H]]; epsilon) -> y
 *     v = x + skip [+ bias]; m = mean(v); sd = sqrt(mean((v - m)^2) + epsilon);
 *     y = (v - m) / sd * gamma + beta
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "onnxruntime_c_api.h"

static const OrtApi *ort;

enum kind { ROW_QUANTIZE, ROW_DEQUANTIZE, SKIP_LAYER_NORM };

typedef struct {
  OrtCustomOp op;
  enum kind kind;
  int extra; /* RowQuantizeOutliers: outlier channels; RowDequantizeAdd: a part to add;
               SkipLayerNormBias: a bias */
  const char *name;
} FusedOp;

/* Rows below this many elements in all run on the calling thread: a parallel-for costs more. */
#define PARALLEL_MIN_ELEMENTS 65536

#define TRY(expr)                   \
  do {                              \
    OrtStatus *status_ = (expr);    \
    if (status_) return status_;    \
  } while (0)

static int64_t count(const int64_t *dims, size_t rank) {
  int64_t n = 1;
  for (size_t i = 0; i < rank; i++) n *= dims[i];
  return n;
}

static OrtStatus *shape_of(const OrtValue *value, int64_t *dims, size_t *rank) {
  OrtTensorTypeAndShapeInfo *info;
  TRY(ort->GetTensorTypeAndShape(value, &info));
  OrtStatus *status = ort->GetDimensionsCount(info, rank);
  if (!status && *rank > 8) status = ort->CreateStatus(ORT_INVALID_ARGUMENT, "rank above 8");
  if (!status) status = ort->GetDimensions(info, dims, *rank);
  ort->ReleaseTensorTypeAndShapeInfo(info);
  return status;
}

/* Input i's data and shape; an input that is not `want` elements long (-1: any) is refused,
 * since a kernel reads no more than that: the graph's initializers are checked at each run. */
static OrtStatus *input(OrtKernelContext *ctx, size_t i, int64_t want, const void **data,
                        int64_t *dims, size_t *rank) {
  const OrtValue *value;
  TRY(ort->KernelContext_GetInput(ctx, i, &value));
  if (!value) return ort->CreateStatus(ORT_INVALID_ARGUMENT, "ctxembed kernels: missing input");
  TRY(shape_of(value, dims, rank));
  if (want >= 0 && count(dims, *rank) != want)
    return ort->CreateStatus(ORT_INVALID_ARGUMENT,
                             "ctxembed kernels: an input's size does not match its operand");
  return ort->GetTensorMutableData((OrtValue *)value, (void **)data);
}

static OrtStatus *output(OrtKernelContext *ctx, size_t i, const int64_t *dims, size_t rank,
                         void **data) {
  OrtValue *value;
  TRY(ort->KernelContext_GetOutput(ctx, i, dims, rank, &value));
  return ort->GetTensorMutableData(value, data);
}

/* ---- RowQuantize ---------------------------------------------------------------------- */

typedef struct {
  const float *x, *scale;
  float floor, qscale, lo, hi, zp;
  uint8_t *q;
  float *row, *outliers;
  const int64_t *channels;
  int64_t k, m, rows, chunk;
} QuantizeJob;

typedef struct {
  const int32_t *acc;
  const float *col, *row, *extra;
  float *y;
  int64_t n, rows, chunk;
} DequantizeJob;

/* Round to nearest even, as cvtps2dq does in the default mode, for |v| < 2^22. */
static inline float round_even(float v) { return (v + 12582912.0f) - 12582912.0f; }

typedef void (*quantize_fn)(const QuantizeJob *j, const float *x, uint8_t *q, float *row);
typedef void (*dequantize_fn)(const int32_t *a, const float *col, float r, const float *e,
                              float *y, int64_t n);

/* The scalar forms: the reference, the tails of the vector forms, and other CPUs. */
static float scaled_peak(const float *x, const float *s, int64_t from, int64_t k, float peak) {
  for (int64_t c = from; c < k; c++) {
    float a = fabsf(x[c] * s[c]);
    peak = a > peak ? a : peak;
  }
  return peak;
}

static void quantize_tail(const QuantizeJob *j, const float *x, float r, uint8_t *q, int64_t from) {
  for (int64_t c = from; c < j->k; c++) {
    float v = ((x[c] * j->scale[c]) / r) / j->qscale;
    v = v > j->lo ? v : j->lo;
    v = v < j->hi ? v : j->hi;
    q[c] = (uint8_t)(int32_t)(round_even(v) + j->zp);
  }
}

static void quantize_row_scalar(const QuantizeJob *j, const float *x, uint8_t *q, float *row) {
  float peak = scaled_peak(x, j->scale, 0, j->k, 0.0f);
  float r = peak > j->floor ? peak : j->floor;
  *row = r;
  quantize_tail(j, x, r, q, 0);
}

static void dequantize_tail(const int32_t *a, const float *col, float r, const float *e, float *y,
                            int64_t from, int64_t n) {
  for (int64_t c = from; c < n; c++) {
    float v = ((float)a[c] * col[c]) * r;
    y[c] = e ? v + e[c] : v; /* no "+ 0": it would turn -0 into +0 */
  }
}

static void dequantize_row_scalar(const int32_t *a, const float *col, float r, const float *e,
                                  float *y, int64_t n) {
  dequantize_tail(a, col, r, e, y, 0, n);
}

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

__attribute__((target("avx512f"))) static void quantize_row_avx512(const QuantizeJob *j,
                                                                    const float *x, uint8_t *q,
                                                                    float *row) {
  const float *s = j->scale;
  __m512 m = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + 16 <= j->k; c += 16) {
    __m512 v = _mm512_mul_ps(_mm512_loadu_ps(x + c), _mm512_loadu_ps(s + c));
    m = _mm512_max_ps(m, _mm512_abs_ps(v));
  }
  float peak = scaled_peak(x, s, c, j->k, _mm512_reduce_max_ps(m));
  float r = peak > j->floor ? peak : j->floor;
  *row = r;
  const __m512 vr = _mm512_set1_ps(r), vq = _mm512_set1_ps(j->qscale);
  const __m512 lo = _mm512_set1_ps(j->lo), hi = _mm512_set1_ps(j->hi);
  const __m512i zp = _mm512_set1_epi32((int32_t)j->zp);
  for (c = 0; c + 16 <= j->k; c += 16) {
    __m512 v = _mm512_mul_ps(_mm512_loadu_ps(x + c), _mm512_loadu_ps(s + c));
    v = _mm512_div_ps(_mm512_div_ps(v, vr), vq);
    v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
    __m512i i = _mm512_add_epi32(_mm512_cvtps_epi32(v), zp);
    _mm_storeu_si128((__m128i *)(q + c), _mm512_cvtepi32_epi8(i));
  }
  quantize_tail(j, x, r, q, c);
}

__attribute__((target("avx512f"))) static void dequantize_row_avx512(const int32_t *a,
                                                                      const float *col, float r,
                                                                      const float *e, float *y,
                                                                      int64_t n) {
  const __m512 vr = _mm512_set1_ps(r);
  int64_t c = 0;
  for (; c + 16 <= n; c += 16) {
    __m512 v = _mm512_cvtepi32_ps(_mm512_loadu_si512(a + c));
    v = _mm512_mul_ps(_mm512_mul_ps(v, _mm512_loadu_ps(col + c)), vr);
    if (e) v = _mm512_add_ps(v, _mm512_loadu_ps(e + c));
    _mm512_storeu_ps(y + c, v);
  }
  dequantize_tail(a, col, r, e, y, c, n);
}

__attribute__((target("avx2"))) static void quantize_row_avx2(const QuantizeJob *j,
                                                               const float *x, uint8_t *q,
                                                               float *row) {
  const float *s = j->scale;
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 m = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + 8 <= j->k; c += 8)
    m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_mul_ps(_mm256_loadu_ps(x + c),
                                                              _mm256_loadu_ps(s + c))));
  float lanes[8], peak = 0.0f;
  _mm256_storeu_ps(lanes, m);
  for (int l = 0; l < 8; l++) peak = lanes[l] > peak ? lanes[l] : peak;
  peak = scaled_peak(x, s, c, j->k, peak);
  float r = peak > j->floor ? peak : j->floor;
  *row = r;
  const __m256 vr = _mm256_set1_ps(r), vq = _mm256_set1_ps(j->qscale);
  const __m256 lo = _mm256_set1_ps(j->lo), hi = _mm256_set1_ps(j->hi);
  const __m256i zp = _mm256_set1_epi32((int32_t)j->zp);
  int32_t out[8];
  for (c = 0; c + 8 <= j->k; c += 8) {
    __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + c), _mm256_loadu_ps(s + c));
    v = _mm256_div_ps(_mm256_div_ps(v, vr), vq);
    v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
    _mm256_storeu_si256((__m256i *)out, _mm256_add_epi32(_mm256_cvtps_epi32(v), zp));
    for (int l = 0; l < 8; l++) q[c + l] = (uint8_t)out[l];
  }
  quantize_tail(j, x, r, q, c);
}

__attribute__((target("avx2"))) static void dequantize_row_avx2(const int32_t *a, const float *col,
                                                                 float r, const float *e, float *y,
                                                                 int64_t n) {
  const __m256 vr = _mm256_set1_ps(r);
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    __m256 v = _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(a + c)));
    v = _mm256_mul_ps(_mm256_mul_ps(v, _mm256_loadu_ps(col + c)), vr);
    if (e) v = _mm256_add_ps(v, _mm256_loadu_ps(e + c));
    _mm256_storeu_ps(y + c, v);
  }
  dequantize_tail(a, col, r, e, y, c, n);
}
#endif

static quantize_fn quantize_row = quantize_row_scalar;
static dequantize_fn dequantize_row = dequantize_row_scalar;

/* The widest vector form this CPU runs, or a narrower one that $CTXEMBED_KERNELS_ISA names
 * ("avx2", "scalar": how the tests cover every form on one machine). Every form computes the
 * same results. */
__attribute__((visibility("default"))) const char *ctxembed_kernels_form(void) {
  const char *want = getenv("CTXEMBED_KERNELS_ISA");
  if (want && strcmp(want, "scalar") == 0) return "scalar";
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  int avx2_asked = want && strcmp(want, "avx2") == 0;
  if (!avx2_asked && __builtin_cpu_supports("avx512f")) return "avx512";
  if (__builtin_cpu_supports("avx2")) return "avx2";
#endif
  return "scalar";
}

/* Runs fn over `rows` rows of `width` elements each: on this thread when the pass is small
 * (waking onnxruntime's intra-op threads costs more), else in parts on them. */
static OrtStatus *for_rows(OrtKernelContext *ctx, void (*fn)(void *, size_t), void *job,
                           int64_t rows, int64_t width, int64_t *chunk) {
  int64_t parts = rows * width / PARALLEL_MIN_ELEMENTS;
  if (parts > rows) parts = rows;
  if (parts < 2) {
    *chunk = rows;
    if (rows > 0) fn(job, 0);
    return NULL;
  }
  *chunk = (rows + parts - 1) / parts;
  parts = (rows + *chunk - 1) / *chunk;
  return ort->KernelContext_ParallelFor(ctx, fn, (size_t)parts, 0, job);
}

static void quantize_rows(void *arg, size_t part) {
  const QuantizeJob *j = arg;
  int64_t first = (int64_t)part * j->chunk, last = first + j->chunk;
  if (last > j->rows) last = j->rows;
  for (int64_t i = first; i < last; i++) {
    const float *x = j->x + i * j->k;
    quantize_row(j, x, j->q + i * j->k, j->row + i);
    for (int64_t c = 0; c < j->m; c++) {
      int64_t channel = j->channels[c];
      j->outliers[i * j->m + c] = x[channel < 0 ? channel + j->k : channel];
    }
  }
}

static OrtStatus *row_quantize(OrtKernelContext *ctx, int with_outliers) {
  int64_t dims[8], cdims[8], other[8];
  size_t rank, crank = 0, orank;
  const void *x, *scale, *floor_, *qscale, *zp, *channels = NULL;
  TRY(input(ctx, 0, -1, &x, dims, &rank));
  if (rank == 0) return ort->CreateStatus(ORT_INVALID_ARGUMENT, "RowQuantize: x is a scalar");
  QuantizeJob j = {.x = x, .k = dims[rank - 1], .rows = count(dims, rank - 1)};
  TRY(input(ctx, 1, j.k, &scale, other, &orank));
  TRY(input(ctx, 2, 1, &floor_, other, &orank));
  TRY(input(ctx, 3, 1, &qscale, other, &orank));
  TRY(input(ctx, 4, 1, &zp, other, &orank));
  if (with_outliers) {
    TRY(input(ctx, 5, -1, &channels, cdims, &crank));
    j.channels = channels;
    j.m = count(cdims, crank);
    for (int64_t c = 0; c < j.m; c++)
      if (j.channels[c] < -j.k || j.channels[c] >= j.k)
        return ort->CreateStatus(ORT_INVALID_ARGUMENT, "RowQuantize: channel out of range");
  }
  j.scale = scale;
  j.floor = *(const float *)floor_;
  j.qscale = *(const float *)qscale;
  j.zp = (float)*(const uint8_t *)zp;
  j.lo = 0.0f - j.zp; /* what QuantizeLinear clamps to before rounding: uint8's range */
  j.hi = 255.0f - j.zp;
  void *q, *row, *outliers = NULL;
  TRY(output(ctx, 0, dims, rank, &q));
  int64_t rdims[8];
  memcpy(rdims, dims, sizeof(int64_t) * rank);
  rdims[rank - 1] = 1;
  TRY(output(ctx, 1, rdims, rank, &row));
  if (with_outliers) {
    rdims[rank - 1] = j.m;
    TRY(output(ctx, 2, rdims, rank, &outliers));
  }
  j.q = q;
  j.row = row;
  j.outliers = outliers;
  return for_rows(ctx, quantize_rows, &j, j.rows, j.k, &j.chunk);
}

static void dequantize_rows(void *arg, size_t part) {
  const DequantizeJob *j = arg;
  int64_t first = (int64_t)part * j->chunk, last = first + j->chunk;
  if (last > j->rows) last = j->rows;
  for (int64_t i = first; i < last; i++)
    dequantize_row(j->acc + i * j->n, j->col, j->row[i], j->extra ? j->extra + i * j->n : NULL,
                   j->y + i * j->n, j->n);
}

static OrtStatus *row_dequantize(OrtKernelContext *ctx, int with_extra) {
  int64_t dims[8], other[8];
  size_t rank, orank;
  const void *acc, *col, *row, *extra = NULL;
  TRY(input(ctx, 0, -1, &acc, dims, &rank));
  if (rank == 0) return ort->CreateStatus(ORT_INVALID_ARGUMENT, "RowDequantize: acc is a scalar");
  DequantizeJob j = {.acc = acc, .n = dims[rank - 1], .rows = count(dims, rank - 1)};
  TRY(input(ctx, 1, j.n, &col, other, &orank));
  TRY(input(ctx, 2, j.rows, &row, other, &orank));
  if (with_extra) TRY(input(ctx, 3, j.rows * j.n, &extra, other, &orank));
  void *y;
  TRY(output(ctx, 0, dims, rank, &y));
  j.col = col;
  j.row = row;
  j.extra = extra;
  j.y = y;
  return for_rows(ctx, dequantize_rows, &j, j.rows, j.n, &j.chunk);
}

/* ---- SkipLayerNorm -------------------------------------------------------------------- */

typedef struct {
  const float *x, *skip, *gamma, *beta, *bias;
  float *y;
  int64_t h, rows, skip_size, chunk;
  float epsilon;
} NormJob;

#define LANES 16

/* The lanes' sum, halving: a fixed order, so every form below adds in the same order. */
static inline float lane_sum(float *acc) {
  for (int width = LANES / 2; width > 0; width /= 2)
    for (int l = 0; l < width; l++) acc[l] += acc[l + width];
  return acc[0];
}

/* One row, in three passes: v = x + skip [+ bias] (kept in y) and its sum; the sum of squared
 * deviations from the mean (two passes hold the variance where one, sum(v*v)/H - mean^2, loses
 * it to cancellation); y = (v - mean) / sd * gamma + beta. Sums run in LANES interleaved
 * partial sums, in the same order in every form: the vector forms only compile this code for
 * wider registers. onnxruntime's own kernel sums otherwise: results agree to float rounding
 * (tests/test_kernels.py), not bit for bit. */
static inline __attribute__((always_inline)) void norm_row_body(const NormJob *j, int64_t i) {
  const int64_t h = j->h;
  const float *x = j->x + i * h, *skip = j->skip + (i * h) % j->skip_size, *bias = j->bias;
  float *y = j->y + i * h;
  float acc[LANES] = {0};
  if (bias) {
    for (int64_t c = 0; c < h; c++) y[c] = (x[c] + skip[c]) + bias[c];
  } else {
    for (int64_t c = 0; c < h; c++) y[c] = x[c] + skip[c];
  }
  int64_t c = 0;
  for (; c + LANES <= h; c += LANES)
    for (int l = 0; l < LANES; l++) acc[l] += y[c + l];
  for (int l = 0; c + l < h; l++) acc[l] += y[c + l];
  const float mean = lane_sum(acc) / (float)h;
  memset(acc, 0, sizeof acc);
  for (c = 0; c + LANES <= h; c += LANES)
    for (int l = 0; l < LANES; l++) {
      float d = y[c + l] - mean;
      acc[l] += d * d;
    }
  for (int l = 0; c + l < h; l++) {
    float d = y[c + l] - mean;
    acc[l] += d * d;
  }
  const float sd = sqrtf(lane_sum(acc) / (float)h + j->epsilon);
  for (c = 0; c < h; c++) y[c] = (y[c] - mean) / sd * j->gamma[c] + j->beta[c];
}

typedef void (*norm_row_fn)(const NormJob *j, int64_t i);

static void norm_row_scalar(const NormJob *j, int64_t i) { norm_row_body(j, i); }

#if defined(__x86_64__) || defined(_M_X64)
__attribute__((target("avx512f"))) static void norm_row_avx512(const NormJob *j, int64_t i) {
  norm_row_body(j, i);
}

__attribute__((target("avx2"))) static void norm_row_avx2(const NormJob *j, int64_t i) {
  norm_row_body(j, i);
}
#endif

static norm_row_fn norm_row = norm_row_scalar;

static void norm_rows(void *arg, size_t part) {
  const NormJob *j = arg;
  int64_t first = (int64_t)part * j->chunk, last = first + j->chunk;
  if (last > j->rows) last = j->rows;
  for (int64_t i = first; i < last; i++) norm_row(j, i);
}

static OrtStatus *skip_layer_norm(OrtKernelContext *ctx, int with_bias, float epsilon) {
  int64_t dims[8], sdims[8], other[8];
  size_t rank, srank, orank;
  const void *x, *skip, *gamma, *beta, *bias = NULL;
  TRY(input(ctx, 0, -1, &x, dims, &rank));
  if (rank == 0) return ort->CreateStatus(ORT_INVALID_ARGUMENT, "SkipLayerNorm: x is a scalar");
  NormJob j = {.x = x, .h = dims[rank - 1], .rows = count(dims, rank - 1), .epsilon = epsilon};
  TRY(input(ctx, 1, -1, &skip, sdims, &srank));
  j.skip_size = count(sdims, srank);
  if (j.h == 0 || j.skip_size == 0 || j.skip_size % j.h != 0 || j.skip_size > count(dims, rank))
    return ort->CreateStatus(ORT_INVALID_ARGUMENT, "SkipLayerNorm: skip does not match x");
  TRY(input(ctx, 2, j.h, &gamma, other, &orank));
  TRY(input(ctx, 3, j.h, &beta, other, &orank));
  if (with_bias) TRY(input(ctx, 4, j.h, &bias, other, &orank));
  void *y;
  TRY(output(ctx, 0, dims, rank, &y));
  j.skip = skip;
  j.gamma = gamma;
  j.beta = beta;
  j.bias = bias;
  j.y = y;
  /* three passes and a division per element: worth the threads at a quarter of the rows */
  return for_rows(ctx, norm_rows, &j, j.rows, j.h * 4, &j.chunk);
}

static void choose_kernels(void) {
  quantize_row = quantize_row_scalar;
  dequantize_row = dequantize_row_scalar;
  norm_row = norm_row_scalar;
#if defined(__x86_64__) || defined(_M_X64)
  const char *form = ctxembed_kernels_form();
  if (strcmp(form, "avx512") == 0) {
    quantize_row = quantize_row_avx512;
    dequantize_row = dequantize_row_avx512;
    norm_row = norm_row_avx512;
  } else if (strcmp(form, "avx2") == 0) {
    quantize_row = quantize_row_avx2;
    dequantize_row = dequantize_row_avx2;
    norm_row = norm_row_avx2;
  }
#endif
}

/* ---- the custom-op tables ------------------------------------------------------------- */

static const FusedOp *fused_op(const OrtCustomOp *op) { return (const FusedOp *)op; }


typedef struct {
  const FusedOp *op;
  float epsilon; /* SkipLayerNorm's attribute */
} Kernel;

static OrtStatus *ORT_API_CALL create_kernel(const OrtCustomOp *op, const OrtApi *api,
                                             const OrtKernelInfo *info, void **kernel) {
  (void)api;
  Kernel *k = calloc(1, sizeof *k);
  if (!k) return ort->CreateStatus(ORT_FAIL, "ctxembed kernels: out of memory");
  k->op = fused_op(op);
  if (k->op->kind == SKIP_LAYER_NORM) {
    OrtStatus *status = ort->KernelInfoGetAttribute_float(info, "epsilon", &k->epsilon);
    if (status) {
      free(k);
      return status;
    }
  }
  *kernel = k;
  return NULL;
}

static OrtStatus *ORT_API_CALL compute(void *kernel, OrtKernelContext *ctx) {
  const Kernel *k = kernel;
  switch (k->op->kind) {
    case ROW_QUANTIZE:
      return row_quantize(ctx, k->op->extra);
    case ROW_DEQUANTIZE:
      return row_dequantize(ctx, k->op->extra);
    default:
      return skip_layer_norm(ctx, k->op->extra, k->epsilon);
  }
}

static void ORT_API_CALL destroy(void *kernel) { free(kernel); }

static const char *ORT_API_CALL op_name(const OrtCustomOp *op) { return fused_op(op)->name; }

static const char *ORT_API_CALL provider(const OrtCustomOp *op) {
  (void)op;
  return "CPUExecutionProvider";
}

static ONNXTensorElementDataType ORT_API_CALL input_type(const OrtCustomOp *op, size_t i) {
  switch (fused_op(op)->kind) {
    case ROW_QUANTIZE:
      if (i == 4) return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
      return i == 5 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    case ROW_DEQUANTIZE:
      return i == 0 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    default:
      return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
}

static size_t ORT_API_CALL input_count(const OrtCustomOp *op) {
  static const size_t required_inputs[] = {[ROW_QUANTIZE] = 5, [ROW_DEQUANTIZE] = 3,
                                           [SKIP_LAYER_NORM] = 4};
  return required_inputs[fused_op(op)->kind] + (size_t)fused_op(op)->extra;
}

static ONNXTensorElementDataType ORT_API_CALL output_type(const OrtCustomOp *op, size_t i) {
  if (fused_op(op)->kind == ROW_QUANTIZE && i == 0) return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}

static size_t ORT_API_CALL output_count(const OrtCustomOp *op) {
  return fused_op(op)->kind == ROW_QUANTIZE ? 2 + (size_t)fused_op(op)->extra : 1;
}

static OrtCustomOpInputOutputCharacteristic ORT_API_CALL required(const OrtCustomOp *op,
                                                                  size_t i) {
  (void)op;
  (void)i;
  return INPUT_OUTPUT_REQUIRED;
}

static OrtMemType ORT_API_CALL memory_type(const OrtCustomOp *op, size_t i) {
  (void)op;
  (void)i;
  return OrtMemTypeDefault;
}

/* Arity and opset version alike: no op is variadic, and each is version 1 of its function. */
static int ORT_API_CALL one(const OrtCustomOp *op) {
  (void)op;
  return 1;
}

static size_t ORT_API_CALL no_pairs(int **in, int **out) {
  *in = NULL;
  *out = NULL;
  return 0;
}

static void ORT_API_CALL release_pairs(int *in, int *out) {
  (void)in;
  (void)out;
}

static void fill(FusedOp *fused, enum kind kind, int extra, const char *name) {
  OrtCustomOp *op = &fused->op;
  memset(fused, 0, sizeof *fused);
  fused->kind = kind;
  fused->extra = extra;
  fused->name = name;
  op->version = ORT_API_VERSION;
  /* CreateKernel and KernelCompute stay NULL: API 16 on calls the V2 forms, which report
   * errors (an input of the wrong size) as a failed run instead of dropping them. */
  op->GetName = op_name;
  op->GetExecutionProviderType = provider;
  op->GetInputType = input_type;
  op->GetInputTypeCount = input_count;
  op->GetOutputType = output_type;
  op->GetOutputTypeCount = output_count;
  op->KernelDestroy = destroy;
  op->GetInputCharacteristic = required;
  op->GetOutputCharacteristic = required;
  op->GetInputMemoryType = memory_type;
  op->GetVariadicInputMinArity = one;
  op->GetVariadicInputHomogeneity = one;
  op->GetVariadicOutputMinArity = one;
  op->GetVariadicOutputHomogeneity = one;
  op->CreateKernelV2 = create_kernel;
  op->KernelComputeV2 = compute;
  op->InferOutputShapeFn = NULL;
  op->GetStartVersion = one;
  op->GetEndVersion = one;
  op->GetMayInplace = no_pairs;
  op->ReleaseMayInplace = release_pairs;
  op->GetAliasMap = no_pairs;
  op->ReleaseAliasMap = release_pairs;
}

static FusedOp ops[6];
static OrtCustomOpDomain *domain;
static pthread_once_t made = PTHREAD_ONCE_INIT;

/* The ops and their domain, once per process: every session shares them (onnxruntime needs the
 * domain to outlive its sessions), and a session that registers later must not rewrite ops that
 * another is running. */
static void make_domain(void) {
  fill(&ops[0], ROW_QUANTIZE, 0, "RowQuantize");
  fill(&ops[1], ROW_QUANTIZE, 1, "RowQuantizeOutliers");
  fill(&ops[2], ROW_DEQUANTIZE, 0, "RowDequantize");
  fill(&ops[3], ROW_DEQUANTIZE, 1, "RowDequantizeAdd");
  fill(&ops[4], SKIP_LAYER_NORM, 0, "SkipLayerNorm");
  fill(&ops[5], SKIP_LAYER_NORM, 1, "SkipLayerNormBias");
  OrtCustomOpDomain *made_domain;
  OrtStatus *status = ort->CreateCustomOpDomain("ctxembed", &made_domain);
  for (size_t i = 0; !status && i < sizeof ops / sizeof ops[0]; i++)
    status = ort->CustomOpDomain_Add(made_domain, &ops[i].op);
  if (status) {
    ort->ReleaseStatus(status);
    return; /* domain stays NULL: RegisterCustomOps reports it */
  }
  domain = made_domain;
}

/* The entry point onnxruntime calls (SessionOptions.register_custom_ops_library). */
__attribute__((visibility("default"))) OrtStatus *ORT_API_CALL
RegisterCustomOps(OrtSessionOptions *options, const OrtApiBase *base) {
  ort = base->GetApi(ORT_API_VERSION);
  if (!ort) return NULL;  /* an onnxruntime older than these headers: leave the session as is */
  choose_kernels();       /* the same forms each time, unless a test pins another */
  pthread_once(&made, make_domain);
  if (!domain) return ort->CreateStatus(ORT_FAIL, "ctxembed kernels: cannot make their domain");
  return ort->AddCustomOpDomain(options, domain);
}
