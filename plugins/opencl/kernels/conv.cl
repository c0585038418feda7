/* conv.cl - im2col/col2im for conv2d as GEMMs, the direct conv2d kernels (forward, grad of
 * input, grad of weight) for convs whose columns do not fit in a buffer or that are too small
 * for a GEMM, and max_pool2d (forward and backward). Each work-item gathers what its outputs
 * need, so nothing races and no atomics are needed. Float dtypes only; in the 16-bit programs
 * the tensors are ST (read through LD, written through STORE) and what a kernel accumulates
 * into (gx of the pooling backward, the columns) is a float32 temporary (T), rounded once by
 * the host's copy afterwards, as the cpu plugin rounds its float32 result; the direct conv2d
 * sums in registers and rounds each output once itself. */
#if IS_FLOAT
#define Y_AT(p, n, o, a, b) ((p).off_y + (n) * (p).st_y[0] + (o) * (p).st_y[1] + (a) * (p).st_y[2] + (b) * (p).st_y[3])
#define X_AT(p, n, c, a, b) ((p).off_x + (n) * (p).st_x[0] + (c) * (p).st_x[1] + (a) * (p).st_x[2] + (b) * (p).st_x[3])
#define W_AT(p, o, c, a, b) ((p).off_w + (o) * (p).st_w[0] + (c) * (p).st_w[1] + (a) * (p).st_w[2] + (b) * (p).st_w[3])

/* i as coordinates (i0, i1, i2, i3) of a (-, s1, s2, s3) array; in 32 bits when the array has
 * fewer than 2^32 elements (total), since 64-bit division costs several times more on CPUs */
#define SPLIT4(i, total, s1, s2, s3, i0, i1, i2, i3)                                            \
    long i0, i1, i2, i3;                                                                        \
    if ((total) <= 0xffffffffL) {                                                               \
        uint u_ = (uint)(i), a_ = (uint)(s3), b_ = (uint)(s2), c_ = (uint)(s1);                 \
        i3 = u_ % a_, i2 = u_ / a_ % b_, i1 = u_ / (a_ * b_) % c_, i0 = u_ / (a_ * b_ * c_);    \
    } else {                                                                                    \
        i3 = (i) % (s3), i2 = (i) / (s3) % (s2), i1 = (i) / ((s3) * (s2)) % (s1),               \
        i0 = (i) / ((s3) * (s2) * (s1));                                                        \
    }

/* 16 lanes of T (and halves of it), and the mask type select() takes with them */
#if NBK_KIND == 1
#define TV16 double16
#define TV8 double8
#define TV4 double4
#define TV2 double2
#define MV16 long16
#define CONVERT_MV16 convert_long16
#else
#define TV16 float16
#define TV8 float8
#define TV4 float4
#define TV2 float2
#define MV16 int16
#define CONVERT_MV16
#endif
#define NBK_LANES16 ((MV16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15))

/* v = 16 lanes of buf from element e on (lane k: e + k), of which lanes lo <= k < hi are
 * wanted; mv marks them for select(). Where all 16 elements lie inside the buffer (len
 * elements) it is one vector load, and the unwanted lanes hold whatever the buffer has there
 * (the callers select them away, never multiply them in); else the wanted lanes one by one. */
#define NBK_LOAD16(buf, e, lo, hi, len, v, mv)                                              \
    do {                                                                                      \
        mv = NBK_LANES16 >= (MV16)(lo) & NBK_LANES16 < (MV16)(hi);                            \
        if (!IS_HALF && (e) >= 0 && (e) + 16 <= (len)) {                                      \
            v = vload16(0, (__global const T *)(buf) + (e));                                  \
        } else {                                                                              \
            T b_[16];                                                                         \
            for (int k_ = 0; k_ < 16; k_++)                                                   \
                b_[k_] = k_ >= (lo) && k_ < (hi) ? LD((buf), (e) + k_) : (T)0;                \
            v = vload16(0, b_);                                                               \
        }                                                                                     \
    } while (0)

/* The same for lanes k at element e + k * st (a strided row): each wanted lane alone. */
#define NBK_GATHER16(buf, e, st, mask_of_k, v, mv)                                          \
    do {                                                                                      \
        T b_[16];                                                                             \
        int m_[16];                                                                           \
        for (int k_ = 0; k_ < 16; k_++) {                                                     \
            m_[k_] = (mask_of_k) ? -1 : 0;                                                    \
            b_[k_] = m_[k_] ? LD((buf), (e) + k_ * (st)) : (T)0;                              \
        }                                                                                     \
        v = vload16(0, b_);                                                                   \
        mv = CONVERT_MV16(vload16(0, m_));                                                    \
    } while (0)

/* lanes summed as a fixed tree */
T nbk_hsum16(TV16 v)
{
    TV8 h = v.lo + v.hi;
    TV4 q = h.lo + h.hi;
    TV2 d = q.lo + q.hi;
    return d.lo + d.hi;
}

/* y (N,O,OH,OW): one work-item per output row (n, oh) of a block of NBK_CONV_OB output
 * channels of one group, in pieces of 16 columns held in vector registers: each input vector
 * loaded serves NBK_CONV_OB channels, each weight 16 columns. Every element sums its taps in
 * plain (c, a, b) order from 0, as a sum per element would. A tap that falls into the padding
 * is not added (its lane adds +0, which leaves a sum that started at +0 as it is), so an inf
 * weight next to the padding gives inf, not NaN, as before. */
__kernel void conv2d(__global ST *y, __global const ST *x, __global const ST *w, nbk_conv p)
{
    long cg = p.c / p.groups, og = p.o / p.groups, obg = (og + NBK_CONV_OB - 1) / NBK_CONV_OB;
    long i = get_global_id(0);
    if (i >= p.n * p.groups * obg * p.oh)
        return;
    long oh = i % p.oh, blk = i / p.oh % (p.groups * obg), n = i / (p.oh * p.groups * obg);
    long grp = blk / obg, o0 = grp * og + blk % obg * NBK_CONV_OB;
    int nob = (int)min((long)NBK_CONV_OB, (grp + 1) * og - o0);
    long xn = p.off_x + n * p.st_x[0] + grp * cg * p.st_x[1];
    long sx = p.sw * p.st_x[3];
    for (long ow0 = 0; ow0 < p.ow; ow0 += 16) {
        TV16 acc[NBK_CONV_OB];
        for (int ob = 0; ob < NBK_CONV_OB; ob++)
            acc[ob] = (TV16)(0);
        for (long c = 0; c < cg; c++) {
            long xc = xn + c * p.st_x[1];
            for (long a = 0; a < p.kh; a++) {
                long ih = oh * p.sh - p.ph + a * p.dh;
                if (ih < 0 || ih >= p.h)
                    continue;
                long xr = xc + ih * p.st_x[2];
                for (long b = 0; b < p.kw; b++) {
                    /* input column of output column ow0 + t: iw0 + t * sw */
                    long iw0 = ow0 * p.sw + b * p.dw - p.pw;
                    T wv[NBK_CONV_OB];
                    for (int ob = 0; ob < NBK_CONV_OB; ob++)
                        wv[ob] = ob < nob ? LD(w, W_AT(p, o0 + ob, c, a, b)) : (T)0;
                    TV16 xv;
                    MV16 mv;
                    int all = 0;
                    if (sx == 1) { /* lanes [lo, hi) fall inside the row */
                        long lo = max(0L, -iw0), hi = min(16L, min(p.ow - ow0, p.w - iw0));
                        NBK_LOAD16(x, xr + iw0, lo, hi, p.len_x, xv, mv);
                        all = lo == 0 && hi == 16;
                    } else {
                        NBK_GATHER16(x, xr + iw0 * p.st_x[3], sx,
                                     ow0 + k_ < p.ow && iw0 + k_ * p.sw >= 0 &&
                                         iw0 + k_ * p.sw < p.w,
                                     xv, mv);
                    }
                    if (all) {
                        for (int ob = 0; ob < NBK_CONV_OB; ob++)
                            acc[ob] += xv * wv[ob];
                    } else {
                        for (int ob = 0; ob < NBK_CONV_OB; ob++)
                            acc[ob] += select((TV16)(0), xv * wv[ob], mv);
                    }
                }
            }
        }
#pragma unroll
        for (int ob = 0; ob < NBK_CONV_OB; ob++) { /* constant indices: acc[] in registers */
            T out[16];
            vstore16(acc[ob], 0, out);
            for (int t = 0; t < 16 && ob < nob && ow0 + t < p.ow; t++)
                STORE(y, Y_AT(p, n, o0 + ob, oh, ow0 + t), out[t]);
        }
    }
}

/* gx (N,C,H,W) = sum over the outputs each input element feeds, in (o, a, b) order from 0. Laid
 * out as the forward: one work-item per input row (n, ih) of a block of NBK_CONV_OB input
 * channels of one group, in pieces of 16 columns held in vector registers; a lane whose tap
 * lands on no output (padding, or between the outputs of a stride) adds nothing. */
__kernel void conv2d_backward_input(__global ST *gx, __global const ST *gy,
                                    __global const ST *w, nbk_conv p)
{
    long cg = p.c / p.groups, og = p.o / p.groups, cbg = (cg + NBK_CONV_OB - 1) / NBK_CONV_OB;
    long i = get_global_id(0);
    if (i >= p.n * p.groups * cbg * p.h)
        return;
    long ih = i % p.h, blk = i / p.h % (p.groups * cbg), n = i / (p.h * p.groups * cbg);
    long grp = blk / cbg, cl0 = blk % cbg * NBK_CONV_OB;
    int ncb = (int)min((long)NBK_CONV_OB, cg - cl0);
    long yn = p.off_y + n * p.st_y[0], sy = p.st_y[3];
    for (long iw0 = 0; iw0 < p.w; iw0 += 16) {
        TV16 acc[NBK_CONV_OB];
        for (int cb = 0; cb < NBK_CONV_OB; cb++)
            acc[cb] = (TV16)(0);
        for (long o = grp * og; o < (grp + 1) * og; o++)
            for (long a = 0; a < p.kh; a++) {
                long t = ih + p.ph - a * p.dh;
                if (t < 0 || t % p.sh || t / p.sh >= p.oh)
                    continue;
                long yr = yn + o * p.st_y[1] + t / p.sh * p.st_y[2];
                for (long b = 0; b < p.kw; b++) {
                    /* output column of input column iw0 + k: (u0 + k) / sw where divisible */
                    long u0 = iw0 + p.pw - b * p.dw;
                    T wv[NBK_CONV_OB];
                    for (int cb = 0; cb < NBK_CONV_OB; cb++)
                        wv[cb] = cb < ncb ? LD(w, W_AT(p, o, cl0 + cb, a, b)) : (T)0;
                    TV16 yv;
                    MV16 mv;
                    int all = 0;
                    if (p.sw == 1 && sy == 1) {
                        long lo = max(0L, -u0), hi = min(16L, min(p.ow - u0, p.w - iw0));
                        NBK_LOAD16(gy, yr + u0, lo, hi, p.len_y, yv, mv);
                        all = lo == 0 && hi == 16;
                    } else { /* strided: lane k takes output (u0 + k) / sw where divisible */
                        T b_[16];
                        int m_[16];
                        for (int k = 0; k < 16; k++) {
                            long u = u0 + k;
                            m_[k] = iw0 + k < p.w && u >= 0 && u % p.sw == 0 && u / p.sw < p.ow
                                        ? -1 : 0;
                            b_[k] = m_[k] ? LD(gy, yr + u / p.sw * sy) : (T)0;
                        }
                        yv = vload16(0, b_);
                        mv = CONVERT_MV16(vload16(0, m_));
                    }
                    if (all) {
                        for (int cb = 0; cb < NBK_CONV_OB; cb++)
                            acc[cb] += yv * wv[cb];
                    } else {
                        for (int cb = 0; cb < NBK_CONV_OB; cb++)
                            acc[cb] += select((TV16)(0), yv * wv[cb], mv);
                    }
                }
            }
#pragma unroll
        for (int cb = 0; cb < NBK_CONV_OB; cb++) { /* constant indices: acc[] in registers */
            T out[16];
            vstore16(acc[cb], 0, out);
            for (int k = 0; k < 16 && cb < ncb && iw0 + k < p.w; k++)
                STORE(gx, X_AT(p, n, grp * cg + cl0 + cb, ih, iw0 + k), out[k]);
        }
    }
}

/* gw (O,C/g,KH,KW) = sum over batch and output positions. One work-item per tap (c, a, b) of a
 * block of NBK_CONV_OB output channels of one group: for each output row it loads the input
 * row (shifted by the tap) once for the block, in pieces of 16 columns, and keeps 16 running
 * sums per weight in vector registers (lane k sums the columns k, k + 16, ...), added as a
 * fixed tree at the end. Columns whose tap falls into the padding add nothing. */
__kernel void conv2d_backward_weight(__global ST *gw, __global const ST *gy,
                                     __global const ST *x, nbk_conv p)
{
    long cg = p.c / p.groups, og = p.o / p.groups, obg = (og + NBK_CONV_OB - 1) / NBK_CONV_OB;
    long KK = p.kh * p.kw, i = get_global_id(0);
    if (i >= p.groups * obg * cg * KK)
        return;
    long b = i % p.kw, a = i / p.kw % p.kh, c = i / KK % cg, blk = i / (KK * cg);
    long grp = blk / obg, o0 = grp * og + blk % obg * NBK_CONV_OB;
    int nob = (int)min((long)NBK_CONV_OB, (grp + 1) * og - o0);
    long cx = grp * cg + c, sy = p.st_y[3], sx = p.sw * p.st_x[3];
    TV16 acc[NBK_CONV_OB];
    for (int ob = 0; ob < NBK_CONV_OB; ob++)
        acc[ob] = (TV16)(0);
    for (long n = 0; n < p.n; n++) {
        long yn = p.off_y + n * p.st_y[0] + o0 * p.st_y[1];
        long xn = p.off_x + n * p.st_x[0] + cx * p.st_x[1];
        for (long oh = 0; oh < p.oh; oh++) {
            long ih = oh * p.sh - p.ph + a * p.dh;
            if (ih < 0 || ih >= p.h)
                continue;
            long yr = yn + oh * p.st_y[2], xr = xn + ih * p.st_x[2];
            for (long ow0 = 0; ow0 < p.ow; ow0 += 16) {
                long iw0 = ow0 * p.sw + b * p.dw - p.pw;
                TV16 xv, yv;
                MV16 mv, my;
                if (sx == 1) {
                    long lo = max(0L, -iw0), hi = min(16L, min(p.ow - ow0, p.w - iw0));
                    NBK_LOAD16(x, xr + iw0, lo, hi, p.len_x, xv, mv);
                } else {
                    NBK_GATHER16(x, xr + iw0 * p.st_x[3], sx,
                                 ow0 + k_ < p.ow && iw0 + k_ * p.sw >= 0 &&
                                     iw0 + k_ * p.sw < p.w,
                                 xv, mv);
                }
                long hy = min(16L, p.ow - ow0);
                /* constant trip counts and indices throughout, unrolled (the loads inside hold
                 * a loop), so acc[] stays in registers */
#pragma unroll
                for (int ob = 0; ob < NBK_CONV_OB; ob++) {
                    if (ob < nob) {
                        long e = yr + ob * p.st_y[1] + ow0 * sy;
                        if (sy == 1)
                            NBK_LOAD16(gy, e, 0, hy, p.len_y, yv, my);
                        else
                            NBK_GATHER16(gy, e, sy, k_ < hy, yv, my);
                        acc[ob] += select((TV16)(0), yv * xv, mv);
                    }
                }
            }
        }
    }
#pragma unroll
    for (int ob = 0; ob < NBK_CONV_OB; ob++)
        if (ob < nob)
            STORE(gw, W_AT(p, o0 + ob, c, a, b), nbk_hsum16(acc[ob]));
}

/* col (C*KH*KW, N, OH*OW) from x: row (c, a, b), column (n, oh, ow); zero where the tap falls
 * into the padding */
__kernel void im2col(__global T *col, __global const ST *x, nbk_conv p)
{
    long L = p.oh * p.ow, NL = p.n * L, KK = p.kh * p.kw;
    long i = get_global_id(0);
    if (i >= p.c * KK * NL)
        return;
    long l = i % L, n = i / L % p.n, r = i / NL;
    long b = r % p.kw, a = r / p.kw % p.kh, c = r / KK;
    long ih = l / p.ow * p.sh - p.ph + a * p.dh, iw = l % p.ow * p.sw - p.pw + b * p.dw;
    col[i] = (ih >= 0 && ih < p.h && iw >= 0 && iw < p.w) ? LD(x, X_AT(p, n, c, ih, iw)) : (T)0;
}

/* gx (N,C,H,W) = the sum of the columns of col (laid out as im2col's) that element feeds; one
 * work-item per element gathers them, so nothing races */
__kernel void col2im(__global ST *gx, __global const T *col, nbk_conv p)
{
    long i = get_global_id(0), total = p.n * p.c * p.h * p.w;
    if (i >= total)
        return;
    SPLIT4(i, total, p.c, p.h, p.w, n, c, ih, iw);
    long L = p.oh * p.ow, NL = p.n * L;
    T acc = 0;
    if (p.sh == 1 && p.sw == 1) { /* stride 1: every tap lands on an output, no division */
        long cb = c * p.kh * p.kw * NL + n * L;
        for (long a = 0; a < p.kh; a++) {
            long t = ih + p.ph - a * p.dh;
            if (t < 0 || t >= p.oh)
                continue;
            for (long b = 0; b < p.kw; b++) {
                long u = iw + p.pw - b * p.dw;
                if (u >= 0 && u < p.ow)
                    acc += col[cb + (a * p.kw + b) * NL + t * p.ow + u];
            }
        }
        STORE(gx, X_AT(p, n, c, ih, iw), acc);
        return;
    }
    for (long a = 0; a < p.kh; a++) {
        long t = ih + p.ph - a * p.dh;
        if (t < 0 || t % p.sh || t / p.sh >= p.oh)
            continue;
        for (long b = 0; b < p.kw; b++) {
            long u = iw + p.pw - b * p.dw;
            if (u < 0 || u % p.sw || u / p.sw >= p.ow)
                continue;
            acc += col[((c * p.kh + a) * p.kw + b) * NL + n * L + t / p.sh * p.ow + u / p.sw];
        }
    }
    STORE(gx, X_AT(p, n, c, ih, iw), acc);
}

/* y (N,C,OH,OW) = window max, idx (role w, shaped like y) = its flat h*W+w; NaN wins, and an
 * all -inf window reports its first in-bounds element, as PyTorch does. One work-item per
 * output row (n, c, oh): its index is split once, not once per element. */
__kernel void max_pool2d(__global ST *y, __global const ST *x, __global long *idx, nbk_conv p)
{
    long i = get_global_id(0), total = p.n * p.c * p.oh;
    if (i >= total)
        return;
    long oh = i % p.oh, c = i / p.oh % p.c, n = i / (p.oh * p.c);
    long h0 = oh * p.sh - p.ph, hs = max(h0, 0L), he = min(h0 + p.kh, p.h);
    long xb = p.off_x + n * p.st_x[0] + c * p.st_x[1];
    long yr = p.off_y + n * p.st_y[0] + c * p.st_y[1] + oh * p.st_y[2];
    long ir = p.off_w + n * p.st_w[0] + c * p.st_w[1] + oh * p.st_w[2];
    for (long ow = 0; ow < p.ow; ow++) {
        long w0 = ow * p.sw - p.pw, ws = max(w0, 0L), we = min(w0 + p.kw, p.w);
        T best = -INFINITY;
        long bi = hs * p.w + ws;
        for (long a = hs; a < he; a++)
            for (long b = ws; b < we; b++) {
                T v = LD(x, xb + a * p.st_x[2] + b * p.st_x[3]);
                if (v > best || (IS_NAN(v) && !IS_NAN(best))) { /* the first NaN stays */
                    best = v;
                    bi = a * p.w + b;
                }
            }
        STORE(y, yr + ow * p.st_y[3], best); /* a 16-bit max is exact: no rounding */
        idx[ir + ow * p.st_w[3]] = bi;
    }
}

/* gx (N,C,H,W): each input element sums the gradients of the windows that picked it. One
 * work-item per input row (n, c, ih) zeroes the row, then walks the windows that can cover it
 * and adds each window's gradient where its index falls into the row: no division per element,
 * and each element still sums its windows in (oh, ow) order. An index outside the row (or the
 * plane) is ignored. */
__kernel void max_pool2d_backward(__global T *gx, __global const ST *gy,
                                  __global const long *idx, nbk_conv p)
{
    long i = get_global_id(0), total = p.n * p.c * p.h;
    if (i >= total)
        return;
    long ih = i % p.h, c = i / p.h % p.c, n = i / (p.h * p.c);
    long xr = p.off_x + n * p.st_x[0] + c * p.st_x[1] + ih * p.st_x[2], sx = p.st_x[3];
    for (long iw = 0; iw < p.w; iw++)
        gx[xr + iw * sx] = 0;
    /* windows oh with oh*sh - ph <= ih < oh*sh - ph + kh */
    long oh0 = 0, oh1 = p.oh - 1;
    if (p.kh > 0 && p.kw > 0 && p.sh > 0 && p.sw > 0) { /* else: scan the whole plane */
        oh0 = ih + p.ph - p.kh + 1;
        oh0 = oh0 <= 0 ? 0 : (oh0 + p.sh - 1) / p.sh;
        oh1 = min((ih + p.ph) / p.sh, p.oh - 1);
    }
    long lo = ih * p.w, hi = lo + p.w;
    for (long oh = oh0; oh <= oh1; oh++) {
        long ir = p.off_w + n * p.st_w[0] + c * p.st_w[1] + oh * p.st_w[2];
        long yr = p.off_y + n * p.st_y[0] + c * p.st_y[1] + oh * p.st_y[2];
        for (long ow = 0; ow < p.ow; ow++) {
            long j = idx[ir + ow * p.st_w[3]];
            if (j >= lo && j < hi)
                gx[xr + (j - lo) * sx] += LD(gy, yr + ow * p.st_y[3]);
        }
    }
}
#endif
