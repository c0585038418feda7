/* nn.cl - tier-2 fused kernels: relu_backward, softmax/log_softmax and their backwards (one
 * work-group per row), and the SGD and Adam parameter updates. Float dtypes only; in the 16-bit
 * programs each computes in float and rounds each output (and optimizer state) once. */
#if IS_FLOAT

__kernel void relu_backward(__global ST *out, __global const ST *grad, __global const ST *x,
                            nbk_geom g)
{
    NBK_CHUNKED(3);
    NBK_LOOP(7, STORE(out, p0, LD(x, p2) > 0 ? LD(grad, p1) : (T)0));
}

/* max that propagates NaN */
#define NBK_NMAX(a, b) (IS_NAN(a) ? (a) : IS_NAN(b) ? (b) : fmax((a), (b)))

/* Work-group tree over lv (a power of two); op 0 sums, 1 takes the max. Every item gets the
 * result. */
T nbk_group_reduce(__local T *lv, T v, int op)
{
    int lid = get_local_id(0);
    lv[lid] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int h = get_local_size(0) / 2; h > 0; h >>= 1) {
        if (lid < h)
            lv[lid] = op ? NBK_NMAX(lv[lid], lv[lid + h]) : lv[lid] + lv[lid + h];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    T r = lv[0];
    barrier(CLK_LOCAL_MEM_FENCE); /* lv is reused by the next call */
    return r;
}

/* Row r of g (the leading dims, operands 0 out and 1 in) holds len elements with strides
 * ost/ist. out = softmax(in) or, with take_log, log_softmax(in). */
__kernel void softmax_rows(__global ST *out, __global const ST *in, nbk_geom g, long len, long ost,
                           long ist, int take_log, __local T *lv)
{
    long r = get_group_id(0), o[2];
    nbk_offsets(&g, r, 2, o);
    int lid = get_local_id(0), wg = get_local_size(0);
    T m = -INFINITY;
    for (long k = lid; k < len; k += wg)
        m = NBK_NMAX(m, LD(in, o[1] + k * ist));
    m = nbk_group_reduce(lv, m, 1); /* a NaN anywhere makes the row NaN, as in torch */
    T s = 0;
    for (long k = lid; k < len; k += wg)
        s += exp(LD(in, o[1] + k * ist) - m);
    s = nbk_group_reduce(lv, s, 0);
    T ls = log(s);
    for (long k = lid; k < len; k += wg) {
        T x = LD(in, o[1] + k * ist) - m;
        STORE(out, o[0] + k * ost, take_log ? x - ls : exp(x) / s);
    }
}

/* operands 0 out, 1 grad, 2 y (the forward output). softmax: out = y * (g - sum(g * y));
 * log_softmax (take_log): out = g - exp(y) * sum(g). */
__kernel void softmax_backward_rows(__global ST *out, __global const ST *gr, __global const ST *y,
                                    nbk_geom g, long len, long ost, long gst, long yst,
                                    int take_log, __local T *lv)
{
    long r = get_group_id(0), o[3];
    nbk_offsets(&g, r, 3, o);
    int lid = get_local_id(0), wg = get_local_size(0);
    T s = 0;
    for (long k = lid; k < len; k += wg) {
        T gv = LD(gr, o[1] + k * gst);
        s += take_log ? gv : gv * LD(y, o[2] + k * yst);
    }
    s = nbk_group_reduce(lv, s, 0);
    for (long k = lid; k < len; k += wg) {
        T gv = LD(gr, o[1] + k * gst), yv = LD(y, o[2] + k * yst);
        STORE(out, o[0] + k * ost, take_log ? gv - exp(yv) * s : yv * (gv - s));
    }
}

/* operands 0 param, 1 grad, 2 momentum buffer (ignored unless has_buf). As torch.optim.SGD. */
__kernel void sgd_step(__global ST *p, __global const ST *gr, __global ST *buf, nbk_geom g,
                       T lr, T momentum, T dampening, T wd, int nesterov, int first, int has_buf)
{
    NBK_ELEMENT(3);
    T pv = LD(p, o[0]), d = LD(gr, o[1]);
    if (wd != 0)
        d += wd * pv;
    if (momentum != 0 && has_buf) {
        T b = first ? d : momentum * LD(buf, o[2]) + (1 - dampening) * d;
        STORE(buf, o[2], b);
        d = nesterov ? d + momentum * b : b;
    }
    STORE(p, o[0], pv - lr * d);
}

/* operands 0 param, 1 grad, 2 exp_avg, 3 exp_avg_sq. As torch.optim.Adam / AdamW; the bias
 * corrections come from the host: step_size = lr / (1 - beta1^t), bc2_sqrt = sqrt(1 - beta2^t). */
__kernel void adam_step(__global ST *p, __global const ST *gr, __global ST *m, __global ST *v,
                        nbk_geom g, T lr, T beta1, T beta2, T eps, T wd, T step_size, T bc2_sqrt,
                        int decoupled)
{
    NBK_ELEMENT(4);
    T pv = LD(p, o[0]), gv = LD(gr, o[1]), m0 = LD(m, o[2]);
    if (decoupled)
        pv *= 1 - lr * wd;
    else if (wd != 0)
        gv += wd * pv;
    T mv = m0 + (1 - beta1) * (gv - m0);
    T vv = beta2 * LD(v, o[3]) + (1 - beta2) * gv * gv;
    STORE(m, o[2], mv);
    STORE(v, o[3], vv);
    STORE(p, o[0], pv - step_size * mv / (sqrt(vv) / bc2_sqrt + eps));
}
#endif
