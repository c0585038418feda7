/* index.cl - gather and scatter_add along one dim. Each checks its indices as it goes: a bad
 * one is skipped (never read or written through) and recorded in flag, which the host reads at
 * the next synchronisation point, so no op waits for a check. In the 16-bit programs gather
 * moves the stored bits, and scatter_add sums 16-bit sources (LD) into a float32 copy of out
 * (T), which the host rounds back once. */

/* The first bad index wins flag (NBK_FLAG_WORDS ints, see nbk_shared.h). 32-bit atomics are
 * core in OpenCL C 1.1; the words after the first are written only by the winner. */
void nbk_flag_bad(__global volatile int *flag, long v, long size, long dim, int op)
{
    if (atomic_cmpxchg(&flag[0], 0, 1) != 0)
        return;
    flag[1] = (int)(uint)(ulong)v;
    flag[2] = (int)(uint)((ulong)v >> 32);
    flag[3] = (int)(uint)(ulong)size;
    flag[4] = (int)(uint)((ulong)size >> 32);
    flag[5] = (int)dim;
    flag[6] = op;
}

/* Operands: 0 out, 1 data (its stride along dim set to 0), 2 index; dstride is data's stride
 * along dim, size its size there. A bad index writes 0. */
__kernel void gather(__global ST *out, __global const ST *data, __global const long *idx,
                     nbk_geom g, long dstride, long size, long dim, __global volatile int *flag)
{
    NBK_ELEMENT(3);
    long v = idx[o[2]];
    if (v < 0 || v >= size) {
        nbk_flag_bad(flag, v, size, dim, 0);
        out[o[0]] = (ST)0;
        return;
    }
    out[o[0]] = data[o[1] + v * dstride];
}

/* One work-item per line along dim: operands 0 out (stride along dim set to 0), 1 index,
 * 2 src, over the index's shape with dim collapsed. Distinct lines write distinct output
 * elements, so no atomics are needed and the sums come out in a fixed order. */
__kernel void scatter_add(__global T *out, __global const long *idx, __global const ST *src,
                          nbk_geom g, long len, long ost, long ist, long sst, long size,
                          long dim, __global volatile int *flag)
{
    NBK_ELEMENT(3);
    for (long j = 0; j < len; j++) {
        long v = idx[o[1] + j * ist];
        if (v < 0 || v >= size) {
            nbk_flag_bad(flag, v, size, dim, 1);
            continue;
        }
        long t = o[0] + v * ost;
#if IS_BOOL
        out[t] = (out[t] | src[o[2] + j * sst]) != 0;
#else
        out[t] += LD(src, o[2] + j * sst);
#endif
    }
}

/* scatter_add for few long lines (a 1-d scatter_add is one line), in two passes. First, work-item
 * (line, s) sums chunk s of its line (j in [s * per, (s + 1) * per)) into its own row of part,
 * m values that it zeroes first: rows are private to a work-item, so nothing races. */
__kernel void scatter_add_chunks(__global T *part, __global const long *idx,
                                 __global const ST *src, nbk_geom g, long len, long per, long m,
                                 long ist, long sst, long dim, __global volatile int *flag)
{
    long line = get_global_id(0), s = get_global_id(1);
    if (line >= g.n)
        return;
    long o[3];
    nbk_offsets(&g, line, 3, o);
    __global T *row = part + (s * g.n + line) * m;
    for (long v = 0; v < m; v++)
        row[v] = (T)0;
    long j1 = min(len, (s + 1) * per);
    for (long j = s * per; j < j1; j++) {
        long v = idx[o[1] + j * ist];
        if (v < 0 || v >= m) {
            nbk_flag_bad(flag, v, m, dim, 1);
            continue;
        }
#if IS_BOOL
        row[v] = (row[v] | src[o[2] + j * sst]) != 0;
#else
        row[v] += LD(src, o[2] + j * sst);
#endif
    }
}

/* Second pass: out[line, v] += the chunks' sums, added in chunk order, so the result does not
 * depend on scheduling. */
__kernel void scatter_add_combine(__global T *out, __global const T *part, nbk_geom g, long m,
                                  long chunks, long ost)
{
    long i = get_global_id(0);
    if (i >= g.n * m)
        return;
    long line = i / m, v = i % m;
    long o[3];
    nbk_offsets(&g, line, 3, o);
    T acc = (T)0;
    for (long s = 0; s < chunks; s++) {
#if IS_BOOL
        acc = (acc | part[(s * g.n + line) * m + v]) != 0;
#else
        acc += part[(s * g.n + line) * m + v];
#endif
    }
    long t = o[0] + v * ost;
#if IS_BOOL
    out[t] = (out[t] | acc) != 0;
#else
    out[t] += acc;
#endif
}

