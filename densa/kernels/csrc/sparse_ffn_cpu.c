/* Row-gather kernels for sparse-FFN decode on CPU (fp32), called from densa/kernels/native_cpu.py.
 *
 * Decode reads each active weight row once, so the kernels are memory bound. Two things make a gather
 * reach streaming bandwidth: no gathered copy (each row is consumed where it lies), and several rows read
 * at once, so several independent memory streams are in flight (one row at a time leaves a single core
 * waiting on one stream; ROWS = 8 streams measured ~2x faster than one, see docs/kernels.md).
 *
 * gather_dot:  out[n, k] = dot(W[idx[k], :], x[n, :])              (gate/up rows of the active set)
 * gather_axpy: out[n, :] += sum_k h[n, k] * Wt[idx[k], :]           (rows of the transposed down projection)
 * threshold_ffn: a whole exact-threshold FFN for one token (below)
 */
#include <math.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define ROWS 8

static void dot_rows(const float *const *r, int nr, const float *x, int64_t d, float *out, int64_t out_stride) {
    if (nr == ROWS) {
        const float *r0 = r[0], *r1 = r[1], *r2 = r[2], *r3 = r[3], *r4 = r[4], *r5 = r[5], *r6 = r[6], *r7 = r[7];
        float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f, a4 = 0.f, a5 = 0.f, a6 = 0.f, a7 = 0.f;
#pragma omp simd reduction(+ : a0, a1, a2, a3, a4, a5, a6, a7)
        for (int64_t j = 0; j < d; j++) {
            const float xj = x[j];
            a0 += r0[j] * xj; a1 += r1[j] * xj; a2 += r2[j] * xj; a3 += r3[j] * xj;
            a4 += r4[j] * xj; a5 += r5[j] * xj; a6 += r6[j] * xj; a7 += r7[j] * xj;
        }
        out[0] = a0; out[out_stride] = a1; out[2 * out_stride] = a2; out[3 * out_stride] = a3;
        out[4 * out_stride] = a4; out[5 * out_stride] = a5; out[6 * out_stride] = a6; out[7 * out_stride] = a7;
        return;
    }
    for (int i = 0; i < nr; i++) {
        const float *ri = r[i];
        float a = 0.f;
#pragma omp simd reduction(+ : a)
        for (int64_t j = 0; j < d; j++) a += ri[j] * x[j];
        out[i * out_stride] = a;
    }
}

/* W: rows of length >= d, row stride ld; idx [K]; x [N, d] contiguous; out [N, K] contiguous. */
void densa_gather_dot_f32(const float *W, int64_t ld, const int64_t *idx, int64_t K, const float *x,
                          int64_t N, int64_t d, float *out, int nthreads) {
    const int64_t groups = (K + ROWS - 1) / ROWS;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t g = 0; g < groups; g++) {
        const int64_t k0 = g * ROWS;
        const int nr = (int)(K - k0 < ROWS ? K - k0 : ROWS);
        const float *r[ROWS];
        for (int i = 0; i < nr; i++) r[i] = W + idx[k0 + i] * ld;
        /* the group's rows stay in cache across the tokens: each row is read from memory once */
        for (int64_t n = 0; n < N; n++) dot_rows(r, nr, x + n * d, d, out + n * K + k0, 1);
    }
}

static void axpy_rows(const float *const *r, const float *h, int64_t h_stride, int nr, int64_t lo, int64_t hi,
                      float *out) {
    if (nr == ROWS) {
        const float *r0 = r[0], *r1 = r[1], *r2 = r[2], *r3 = r[3], *r4 = r[4], *r5 = r[5], *r6 = r[6], *r7 = r[7];
        const float h0 = h[0], h1 = h[h_stride], h2 = h[2 * h_stride], h3 = h[3 * h_stride];
        const float h4 = h[4 * h_stride], h5 = h[5 * h_stride], h6 = h[6 * h_stride], h7 = h[7 * h_stride];
#pragma omp simd
        for (int64_t j = lo; j < hi; j++)
            out[j] += h0 * r0[j] + h1 * r1[j] + h2 * r2[j] + h3 * r3[j] + h4 * r4[j] + h5 * r5[j] + h6 * r6[j] +
                      h7 * r7[j];
        return;
    }
    for (int i = 0; i < nr; i++) {
        const float *ri = r[i];
        const float hi_ = h[i * h_stride];
#pragma omp simd
        for (int64_t j = lo; j < hi; j++) out[j] += hi_ * ri[j];
    }
}

/* Wt: rows of length >= d, row stride ld; idx [K]; h [N, K] contiguous; out [N, d] contiguous, accumulated.
 * Threads split the output columns, so no two threads write the same element and no reduction is needed. */
void densa_gather_axpy_f32(const float *Wt, int64_t ld, const int64_t *idx, int64_t K, const float *h,
                           int64_t N, int64_t d, float *out, int nthreads) {
#pragma omp parallel num_threads(nthreads)
    {
        int t = 0, T = 1;
#ifdef _OPENMP
        t = omp_get_thread_num();
        T = omp_get_num_threads();
#endif
        const int64_t per = ((d + T - 1) / T + 15) / 16 * 16; /* whole cache lines per thread */
        const int64_t lo = t * per < d ? t * per : d;
        const int64_t hi = lo + per < d ? lo + per : d;
        for (int64_t k0 = 0; k0 < K && lo < hi; k0 += ROWS) {
            const int nr = (int)(K - k0 < ROWS ? K - k0 : ROWS);
            const float *r[ROWS];
            for (int i = 0; i < nr; i++) r[i] = Wt + idx[k0 + i] * ld;
            for (int64_t n = 0; n < N; n++) axpy_rows(r, h + n * K + k0, 1, nr, lo, hi, out + n * d);
        }
    }
}

/* ---------------------------------------------------------------------------------------------------------
 * Whole one-token FFNs in one call (decode of small models, where a dozen torch ops cost more than the bytes
 * they skip). act: 0 relu, 1 relu2, 2 silu.
 *   threshold_ffn: g_i = dot(gate_i, x); a_i = act(g_i); neuron i active iff |a_i| > t_i
 *   predicted_ffn: the same over only the rows a low-rank predictor selects (Deja Vu):
 *                  z = P_down x [rank]; row i is read iff dot(P_up[i], z) >= 0
 *   h_i = a_i * dot(up_i, x) (gated) or a_i (plain), active rows only; out = sum over active i of h_i down_t[i]
 * Rows are split over threads; each thread compacts its active rows into its own range of idx/h (starting
 * at its first row), then the ranges are joined and the down pass splits the output columns.
 */
static inline float activate(float v, int act) {
    if (act == 0) return v > 0.f ? v : 0.f;
    if (act == 1) return v > 0.f ? v * v : 0.f;
    return v / (1.f + expf(-v));
}

/* rows [lo, hi) with dot(P_up[i], z) >= 0 -> idx[0, m); returns m */
static int64_t select_predicted(const float *p_up, int64_t rank, const float *z, int64_t lo, int64_t hi,
                                int64_t *idx) {
    int64_t m = 0;
    float g[ROWS];
    const float *r[ROWS];
    for (int64_t k0 = lo; k0 < hi; k0 += ROWS) {
        const int nr = (int)(hi - k0 < ROWS ? hi - k0 : ROWS);
        for (int i = 0; i < nr; i++) r[i] = p_up + (k0 + i) * rank;
        dot_rows(r, nr, z, rank, g, 1);
        for (int i = 0; i < nr; i++)
            if (g[i] >= 0.f) idx[m++] = k0 + i;
    }
    return m;
}

/* The gate pass over candidate rows: rows [lo, hi) when listed is 0, else the m rows in idx (compacted in
 * place, which is safe: the n-th kept row is written at or before the position it was read from).
 * Active rows -> idx[0, n), their activations -> h[0, n); returns n. */
static int64_t gate_pass(const float *gate, int64_t ld, const float *x, int64_t d, const float *t, int act,
                         int64_t lo, int64_t hi, int listed, int64_t m, int64_t *idx, float *h) {
    const int64_t count = listed ? m : hi - lo;
    int64_t n = 0;
    float g[ROWS];
    const float *r[ROWS];
    int64_t rows[ROWS];
    for (int64_t k0 = 0; k0 < count; k0 += ROWS) {
        const int nr = (int)(count - k0 < ROWS ? count - k0 : ROWS);
        for (int i = 0; i < nr; i++) {
            rows[i] = listed ? idx[k0 + i] : lo + k0 + i;
            r[i] = gate + rows[i] * ld;
        }
        dot_rows(r, nr, x, d, g, 1);
        for (int i = 0; i < nr; i++) {
            const float a = activate(g[i], act);
            if (fabsf(a) > t[rows[i]]) {
                idx[n] = rows[i];
                h[n] = a;
                n++;
            }
        }
    }
    return n;
}

/* gated FFNs: h_k *= dot(up[idx[k]], x), reading the up rows of the active set only */
static void up_pass(const float *up, int64_t ld, const float *x, int64_t d, const int64_t *idx, int64_t n,
                    float *h) {
    float g[ROWS];
    const float *r[ROWS];
    for (int64_t k0 = 0; k0 < n; k0 += ROWS) {
        const int nr = (int)(n - k0 < ROWS ? n - k0 : ROWS);
        for (int i = 0; i < nr; i++) r[i] = up + idx[k0 + i] * ld;
        dot_rows(r, nr, x, d, g, 1);
        for (int i = 0; i < nr; i++) h[k0 + i] *= g[i];
    }
}

/* out[clo, chi) of this thread's column slice = sum over k < K of h[k] * down_t[idx[k]] */
static void down_pass(const float *down_t, int64_t ld_down, const int64_t *idx, const float *h, int64_t K,
                      int64_t d, int tid, int nt, float *out) {
    const float *r[ROWS];
    const int64_t per = ((d + nt - 1) / nt + 15) / 16 * 16; /* whole cache lines per thread */
    const int64_t clo = tid * per < d ? tid * per : d;
    const int64_t chi = clo + per < d ? clo + per : d;
    for (int64_t j = clo; j < chi; j++) out[j] = 0.f;
    for (int64_t k0 = 0; k0 < K && clo < chi; k0 += ROWS) {
        const int nr = (int)(K - k0 < ROWS ? K - k0 : ROWS);
        for (int i = 0; i < nr; i++) r[i] = down_t + idx[k0 + i] * ld_down;
        axpy_rows(r, h + k0, 1, nr, clo, chi, out);
    }
}

/* Shared body; p_up == 0 for threshold_ffn. Returns the active count; *n_read (if given) the rows read. */
static int64_t fused_ffn(const float *p_up, int64_t rank, const float *z, const float *gate, const float *up,
                         int64_t ld, const float *down_t, int64_t ld_down, int64_t F, int64_t d, const float *x,
                         const float *t, int act, float *out, int64_t *idx, float *h, int64_t *n_read,
                         int nthreads) {
    int64_t counts[256], reads[256];
    const int T = nthreads < 1 ? 1 : (nthreads > 256 ? 256 : nthreads);
#pragma omp parallel num_threads(T)
    {
        int tid = 0, nt = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        nt = omp_get_num_threads();
#endif
        const int64_t lo = F * tid / nt, hi = F * (tid + 1) / nt;
        const int64_t m = p_up != 0 ? select_predicted(p_up, rank, z, lo, hi, idx + lo) : hi - lo;
        const int64_t n = gate_pass(gate, ld, x, d, t, act, lo, hi, p_up != 0, m, idx + lo, h + lo);
        if (up != 0) up_pass(up, ld, x, d, idx + lo, n, h + lo);
        counts[tid] = n;
        reads[tid] = m;
#pragma omp barrier
#pragma omp single
        { /* join the threads' ranges: thread i's start F*i/nt >= the total before it, so copies go left */
            int64_t total = counts[0], read = reads[0];
            for (int i = 1; i < nt; i++) {
                const int64_t start = F * i / nt;
                for (int64_t j = 0; j < counts[i]; j++) {
                    idx[total + j] = idx[start + j];
                    h[total + j] = h[start + j];
                }
                total += counts[i];
                read += reads[i];
            }
            counts[0] = total;
            reads[0] = read;
        } /* implicit barrier: idx/h [0, K) are complete */
        down_pass(down_t, ld_down, idx, h, counts[0], d, tid, nt, out);
    }
    if (n_read != 0) *n_read = reads[0];
    return counts[0];
}

int64_t densa_threshold_ffn_f32(const float *gate, const float *up, int64_t ld, const float *down_t,
                                int64_t ld_down, int64_t F, int64_t d, const float *x, const float *t, int act,
                                float *out, int64_t *idx, float *h, int nthreads) {
    return fused_ffn(0, 0, 0, gate, up, ld, down_t, ld_down, F, d, x, t, act, out, idx, h, 0, nthreads);
}

/* z [rank] is a work buffer: z = P_down x is computed here, once (rank dots: small), before the threads. */
int64_t densa_predicted_ffn_f32(const float *p_down, const float *p_up, int64_t rank, const float *gate,
                                const float *up, int64_t ld, const float *down_t, int64_t ld_down, int64_t F,
                                int64_t d, const float *x, const float *t, int act, float *out, int64_t *idx,
                                float *h, float *z, int64_t *n_read, int nthreads) {
    const float *r[ROWS];
    for (int64_t k0 = 0; k0 < rank; k0 += ROWS) {
        const int nr = (int)(rank - k0 < ROWS ? rank - k0 : ROWS);
        for (int i = 0; i < nr; i++) r[i] = p_down + (k0 + i) * d;
        dot_rows(r, nr, x, d, z + k0, 1);
    }
    return fused_ffn(p_up, rank, z, gate, up, ld, down_t, ld_down, F, d, x, t, act, out, idx, h, n_read,
                     nthreads);
}

/* ---------------------------------------------------------------------------------------------------------
 * Top-k MoE experts for a few tokens (decode) in one call. Expert e is the contiguous neuron block
 * [e*m, (e+1)*m) of gate/up/down_t (densa.sparse_moe stores neurons expert by expert), so an expert is a
 * known active set: only the selected experts' rows are read, each once for all the tokens routed to it.
 *   sel [N, k] expert ids per token; out[n] = sum_j sum_{r in expert sel[n, j]} h[n, r] down_t[r]
 *   h[n, r] = act(dot(gate_r, x_n)) (* dot(up_r, x_n) when gated)
 * Work buffers: slot_tok [N*k], h [N*k*m], starts [E+1], used [E]. Returns 0, or -1 for an expert id
 * outside [0, E) (nothing is written to out then).
 */
int64_t densa_expert_ffn_f32(const float *gate, const float *up, int64_t ld, const float *down_t,
                             int64_t ld_down, int64_t E, int64_t m, int64_t d, const float *x, int64_t N,
                             const int64_t *sel, int64_t k, int act, float *out, int64_t *slot_tok, float *h,
                             int64_t *starts, int64_t *used, int nthreads) {
    const int T = nthreads < 1 ? 1 : nthreads;
    /* counting sort of the N*k slots by expert: slots of expert e are [starts[e], starts[e+1]) */
    for (int64_t e = 0; e <= E; e++) starts[e] = 0;
    for (int64_t s = 0; s < N * k; s++) {
        if (sel[s] < 0 || sel[s] >= E) return -1;
        starts[sel[s] + 1]++;
    }
    int64_t U = 0;
    for (int64_t e = 0; e < E; e++) {
        if (starts[e + 1] > 0) used[U++] = e;
        starts[e + 1] += starts[e];
    }
    for (int64_t s = 0; s < N * k; s++) slot_tok[starts[sel[s]]++] = s / k; /* starts[e] now = end of e */
    for (int64_t e = E; e > 0; e--) starts[e] = starts[e - 1];
    starts[0] = 0;
    const int64_t G = (m + ROWS - 1) / ROWS; /* row groups per expert */
#pragma omp parallel num_threads(T)
    {
        /* up pass: items (used expert, row group); the group's rows stay in cache across its slots */
#pragma omp for schedule(static)
        for (int64_t it = 0; it < U * G; it++) {
            const int64_t e = used[it / G], r0 = e * m + (it % G) * ROWS, c0 = (it % G) * ROWS;
            const int nr = (int)(m - c0 < ROWS ? m - c0 : ROWS);
            const float *rg[ROWS], *ru[ROWS];
            float g[ROWS], u[ROWS];
            for (int i = 0; i < nr; i++) {
                rg[i] = gate + (r0 + i) * ld;
                ru[i] = up != 0 ? up + (r0 + i) * ld : 0;
            }
            for (int64_t s = starts[e]; s < starts[e + 1]; s++) {
                const float *xs = x + slot_tok[s] * d;
                dot_rows(rg, nr, xs, d, g, 1);
                if (up != 0) dot_rows(ru, nr, xs, d, u, 1);
                for (int i = 0; i < nr; i++) h[s * m + c0 + i] = activate(g[i], act) * (up != 0 ? u[i] : 1.f);
            }
        } /* implicit barrier: h is complete */
        /* down pass: threads split the output columns, so no two write the same element */
        int tid = 0, nt = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        nt = omp_get_num_threads();
#endif
        const int64_t per = ((d + nt - 1) / nt + 15) / 16 * 16;
        const int64_t clo = tid * per < d ? tid * per : d;
        const int64_t chi = clo + per < d ? clo + per : d;
        for (int64_t n = 0; n < N && clo < chi; n++)
            for (int64_t j = clo; j < chi; j++) out[n * d + j] = 0.f;
        for (int64_t u = 0; u < U && clo < chi; u++) {
            const int64_t e = used[u];
            for (int64_t c0 = 0; c0 < m; c0 += ROWS) {
                const int nr = (int)(m - c0 < ROWS ? m - c0 : ROWS);
                const float *r[ROWS];
                for (int i = 0; i < nr; i++) r[i] = down_t + (e * m + c0 + i) * ld_down;
                for (int64_t s = starts[e]; s < starts[e + 1]; s++)
                    axpy_rows(r, h + s * m + c0, 1, nr, clo, chi, out + slot_tok[s] * d);
            }
        }
    }
    return 0;
}
