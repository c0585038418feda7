/* reduce.cl - sum/prod/max/min/argmax/argmin over any set of dims: one work-group per output
 * element (or per slice of it, when a few outputs reduce many elements), each work-item walking
 * a contiguous share of the reduced elements, then a tree in local memory. 16-bit inputs accumulate
 * in float (ACC) and round once into the output. */

/* Is candidate (vb, ib) better than the current (va, ia)? NaN counts as the extreme (as in
 * torch.argmax); ties go to the smaller index. */
int nbk_arg_better(int op, ACC va, long ia, ACC vb, long ib)
{
    if (IS_NAN(vb))
        return !IS_NAN(va) || ib < ia;
    if (IS_NAN(va))
        return 0;
    if (vb == va)
        return ib < ia;
    return op == NBK_ARGMAX ? vb > va : vb < va;
}

ACC nbk_red_init(int op)
{
    switch (op) {
    case NBK_SUM: return (ACC)0;
    case NBK_PROD: return (ACC)1;
    case NBK_MAX: case NBK_ARGMAX: return (ACC)T_LOWEST;
    default: return (ACC)T_HIGHEST;
    }
}

/* Combines (vb, ib) into (*va, *ia). NaN propagates through max and min. */
void nbk_red_combine(int op, ACC *va, long *ia, ACC vb, long ib)
{
    switch (op) {
    case NBK_SUM: *va += vb; break;
    case NBK_PROD: *va *= vb; break;
    case NBK_MAX:
        if (!IS_NAN(*va) && (IS_NAN(vb) || vb > *va))
            *va = vb;
        break;
    case NBK_MIN:
        if (!IS_NAN(*va) && (IS_NAN(vb) || vb < *va))
            *va = vb;
        break;
    default:
        if (nbk_arg_better(op, *va, *ia, vb, ib)) {
            *va = vb;
            *ia = ib;
        }
        break;
    }
}

/* Tree over the work-group (a power of two), then work-item 0 writes the result: to out/outi
 * when final, else to the partial buffers pv/pi at index slot. */
void nbk_red_finish(int op, int final_, ACC v, long vi, __local ACC *lv,
                                  __local long *li, __global ST *out, __global long *outi,
                                  long out_off, __global ACC *pv, __global long *pi, long slot)
{
    int lid = get_local_id(0);
    lv[lid] = v;
    li[lid] = vi;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int h = get_local_size(0) / 2; h > 0; h >>= 1) {
        if (lid < h) {
            ACC a = lv[lid];
            long ai = li[lid];
            nbk_red_combine(op, &a, &ai, lv[lid + h], li[lid + h]);
            lv[lid] = a;
            li[lid] = ai;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid != 0)
        return;
    if (!final_) {
        pv[slot] = lv[0];
        pi[slot] = li[0];
    } else if (op == NBK_ARGMAX || op == NBK_ARGMIN) {
        outi[out_off] = li[0] == LONG_MAX ? 0 : li[0];
    } else {
        STORE(out, out_off, TO_T(lv[0]));
    }
}

/* One step of a Kahan sum (acc - comp is the running value): long rows stay accurate; once the
 * sum is inf or NaN the fix-up is skipped. */
#define NBK_KAHAN(acc, comp, x)                                                              \
    do {                                                                                      \
        ACC y_ = (x) - (comp), t_ = (acc) + y_;                                               \
        comp = isfinite(t_) ? (t_ - (acc)) - y_ : (ACC)0;                                     \
        acc = t_;                                                                             \
    } while (0)

/* out and outi name the same buffer: outi is used by argmax/argmin (int64 output). */
__kernel void reduce(__global ST *out, __global long *outi, __global const ST *in,
                     __global ACC *pv, __global long *pi, nbk_red g, int op, int final_,
                     __local ACC *lv, __local long *li)
{
    long grp = get_group_id(0), o = grp / g.split, part = grp % g.split;
    long rem = o, base = g.off_in, out_off = g.off_out;
    for (int d = (int)g.nd_out - 1; d >= 0; d--) {
        long c = rem % g.shape_out[d];
        rem /= g.shape_out[d];
        base += c * g.st_in_out[d];
        out_off += c * g.st_out[d];
    }
    long beg = part * g.chunk, end = min(g.n_red, beg + g.chunk);
    ACC acc = nbk_red_init(op), comp = 0, acc1 = 0, comp1 = 0, acc2 = 0, comp2 = 0, acc3 = 0,
        comp3 = 0;
    long ai = LONG_MAX;
    /* each work-item takes a contiguous run [k0, k1) of the reduced elements and walks it with
     * a running multi-index, so no element costs a division (64-bit divisions per element made
     * the conv bias gradients the slowest reductions on CPU runtimes) */
    long wgs = get_local_size(0), per = (end - beg + wgs - 1) / wgs;
    long k0 = beg + get_local_id(0) * per, k1 = min(end, k0 + per);
    if (k0 < k1) {
        int last = (int)g.nd_red - 1;
        long idx[NBK_MAX_DIMS], off = base, r = k0;
        for (int d = last; d >= 0; d--) {
            idx[d] = r % g.shape_red[d];
            r /= g.shape_red[d];
            off += idx[d] * g.st_in_red[d];
        }
        long inner = last >= 0 ? g.shape_red[last] : 1, sti = last >= 0 ? g.st_in_red[last] : 0;
        long pos = last >= 0 ? idx[last] : 0;
        for (long k = k0; k < k1;) {
            long m = min(k1 - k, inner - pos);
#if IS_FLOAT
            if (op == NBK_SUM) { /* four Kahan sums side by side, so one add need not wait for
                                  * the previous one */
                long j = 0;
                for (; j + 4 <= m; j += 4) {
                    NBK_KAHAN(acc, comp, (ACC)LD(in, off + j * sti));
                    NBK_KAHAN(acc1, comp1, (ACC)LD(in, off + (j + 1) * sti));
                    NBK_KAHAN(acc2, comp2, (ACC)LD(in, off + (j + 2) * sti));
                    NBK_KAHAN(acc3, comp3, (ACC)LD(in, off + (j + 3) * sti));
                }
                for (; j < m; j++)
                    NBK_KAHAN(acc, comp, (ACC)LD(in, off + j * sti));
            } else
#endif
                for (long j = 0; j < m; j++)
                    nbk_red_combine(op, &acc, &ai, (ACC)LD(in, off + j * sti), k + j);
            k += m;
            off += m * sti;
            pos += m;
            if (pos == inner && k < k1) { /* carry into the outer reduced dims */
                pos = 0;
                off -= inner * sti;
                for (int d = last - 1; d >= 0; d--) {
                    off += g.st_in_red[d];
                    if (++idx[d] < g.shape_red[d])
                        break;
                    off -= idx[d] * g.st_in_red[d];
                    idx[d] = 0;
                }
            }
        }
    }
#if IS_FLOAT
    if (op == NBK_SUM) { /* the three other sums into the first, each as its value */
        NBK_KAHAN(acc, comp, acc1 - comp1);
        NBK_KAHAN(acc, comp, acc2 - comp2);
        NBK_KAHAN(acc, comp, acc3 - comp3);
    }
#endif
    nbk_red_finish(op, final_, acc, ai, lv, li, out, outi, out_off, pv, pi, grp);
}

/* Second pass after a split reduction: work-group o combines partials [o*split, (o+1)*split). */
__kernel void reduce_partials(__global ST *out, __global long *outi, __global const ACC *pv_in,
                              __global const long *pi_in, nbk_red g, int op, __local ACC *lv,
                              __local long *li)
{
    long o = get_group_id(0), rem = o, out_off = g.off_out;
    for (int d = (int)g.nd_out - 1; d >= 0; d--) {
        out_off += (rem % g.shape_out[d]) * g.st_out[d];
        rem /= g.shape_out[d];
    }
    ACC acc = nbk_red_init(op);
    long ai = LONG_MAX;
    for (long s = get_local_id(0); s < g.split; s += get_local_size(0))
        nbk_red_combine(op, &acc, &ai, pv_in[o * g.split + s], pi_in[o * g.split + s]);
    nbk_red_finish(op, 1, acc, ai, lv, li, out, outi, out_off, 0, 0, 0);
}
