/* test_serialize.c - tests core/nn/safetensors_write.c, safetensors_read.c and checkpoint.c
 * together (a round trip needs both ends): every dtype, the byte layout, atomic saving, corrupt
 * files of every kind (and every truncation), module checkpoints with their name and shape
 * checks, and interop with an independent Python reader. */
#include "nb_test.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static char dir[256];

static int make_dir(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/nb_test_serialize_XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int remove_dir(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static const char *path_of(const char *name)
{
    static char buf[4][320];
    static int next;
    char *p = buf[next++ & 3];
    snprintf(p, sizeof buf[0], "%s/%s", dir, name);
    return p;
}

static size_t read_file(const char *path, unsigned char **out)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    *out = malloc((size_t)n + 1);
    assert_non_null(*out);
    assert_int_equal(fread(*out, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    return (size_t)n;
}

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);
}

/* A file from a header (padded to 8 like the writer does, or not when pad is false) and data. */
static void write_st(const char *path, const char *header, const void *data, size_t n, bool pad)
{
    size_t h = strlen(header), hp = pad ? (h + 7) / 8 * 8 : h;
    unsigned char *buf = malloc(8 + hp + n + 1);
    for (int k = 0; k < 8; k++)
        buf[k] = (unsigned char)((uint64_t)hp >> (8 * k));
    memcpy(buf + 8, header, h);
    memset(buf + 8 + h, ' ', hp - h);
    if (n)
        memcpy(buf + 8 + hp, data, n);
    write_file(path, buf, 8 + hp + n);
    free(buf);
}

static nb_status load(const char *path, nb_tensor ***ts, char ***names, int32_t *n)
{
    nb_clear_error();
    return nb_safetensors_load(path, NULL, ts, names, n);
}

/* ---- round trips ---- */

static void every_dtype_round_trips(void **state)
{
    (void)state;
    const float f32[6] = {1.5f, -2.25f, 0.0f, -0.0f, 3.4e38f, 1e-30f};
    const double f64[3] = {M_PI, -1e300, 5e-324};
    const int32_t i32[4] = {INT32_MIN, -1, 0, INT32_MAX};
    const int64_t i64[2] = {INT64_MIN, INT64_MAX};
    const uint8_t b[5] = {1, 0, 0, 1, 1};
    const uint8_t u8[3] = {0, 128, 255};
    nb_tensor *base = nb_from_data(f32, NB_SHAPE(2, 3), (nb_opts){0});
    nb_tensor *ts[9] = {
        nb_from_data(f32, NB_SHAPE(2, 3), (nb_opts){0}),
        nb_from_data(f64, NB_SHAPE(3), (nb_opts){.dtype = NB_DTYPE_F64}),
        nb_from_data(i32, NB_SHAPE(2, 1, 2), (nb_opts){.dtype = NB_DTYPE_I32}),
        nb_from_data(i64, NB_SHAPE(2), (nb_opts){.dtype = NB_DTYPE_I64}),
        nb_from_data(b, NB_SHAPE(5), (nb_opts){.dtype = NB_DTYPE_BOOL}),
        nb_from_data(u8, NB_SHAPE(3, 1), (nb_opts){.dtype = NB_DTYPE_U8}),
        nb_scalar(7, (nb_opts){.dtype = NB_DTYPE_I64}),        /* 0-d */
        nb_zeros(NB_SHAPE(0, 4), (nb_opts){}),                 /* no elements */
        nb_t(base),                                            /* not contiguous */
    };
    const char *names[9] = {"f32", "f64", "i32", "i64", "bool", "u8", "scalar",
                            "empty", "quote\"back\\slash\n\xc3\xa9t\xc3\xa9"};
    const char *p = path_of("all.safetensors");
    NB_ASSERT_OK(nb_safetensors_save(p, ts, names, 9));
    assert_int_equal(access(path_of("all.safetensors.tmp"), F_OK), -1); /* renamed away */
    nb_tensor **got;
    char **got_names;
    int32_t n;
    NB_ASSERT_OK(load(p, &got, &got_names, &n));
    assert_int_equal(n, 9);
    for (int i = 0; i < 9; i++) {
        assert_string_equal(got_names[i], names[i]); /* the header's order */
        assert_int_equal(nb_tensor_dtype(got[i]), nb_tensor_dtype(ts[i]));
        nb_shape a = nb_tensor_shape(got[i]), e = nb_tensor_shape(ts[i]);
        assert_int_equal(a.ndim, e.ndim);
        for (int d = 0; d < a.ndim; d++)
            assert_int_equal(a.dims[d], e.dims[d]);
        assert_string_equal(nb_tensor_device(got[i]), "cpu");
        /* bitwise: -0.0 and denormals survive, so compare raw bytes */
        size_t bytes = (size_t)nb_tensor_numel(ts[i]) * nb_dtype_size(nb_tensor_dtype(ts[i]));
        unsigned char x[64], y[64];
        NB_ASSERT_OK(nb_tensor_copy_to_host(ts[i], x, bytes));
        NB_ASSERT_OK(nb_tensor_copy_to_host(got[i], y, bytes));
        assert_memory_equal(x, y, bytes);
    }
    nb_safetensors_free(got, got_names, n);
    for (int i = 0; i < 9; i++)
        nb_release(ts[i]);
    nb_release(base);
    /* no tensors at all is a valid file too */
    NB_ASSERT_OK(nb_safetensors_save(p, NULL, NULL, 0));
    NB_ASSERT_OK(load(p, &got, &got_names, &n));
    assert_int_equal(n, 0);
    nb_safetensors_free(got, got_names, n);
}

static void file_has_the_safetensors_layout(void **state)
{
    (void)state;
    nb_tensor *a = nb_arange(0, 6, 1, (nb_opts){}), *b = nb_ones(NB_SHAPE(2, 2),
                                                                 (nb_opts){.dtype = NB_DTYPE_F64});
    nb_tensor *ts[2] = {a, b};
    const char *names[2] = {"a", "b"};
    const char *p = path_of("layout.safetensors");
    NB_ASSERT_OK(nb_safetensors_save(p, ts, names, 2));
    unsigned char *buf;
    size_t size = read_file(p, &buf);
    uint64_t hlen = 0;
    for (int k = 7; k >= 0; k--)
        hlen = hlen << 8 | buf[k];
    assert_int_equal(hlen % 8, 0);
    assert_int_equal(size, 8 + hlen + 6 * 4 + 4 * 8);
    assert_int_equal(buf[8], '{');
    buf[8 + hlen] = '\0';
    char *header = (char *)buf + 8;
    assert_non_null(strstr(header, "\"a\":{\"dtype\":\"F32\",\"shape\":[6],\"data_offsets\":[0,24]}"));
    assert_non_null(strstr(header, "\"b\":{\"dtype\":\"F64\",\"shape\":[2,2],\"data_offsets\":[24,56]}"));
    /* little-endian float32 data right after the header: 0, 1, 2 ... */
    float v;
    memcpy(&v, buf + 8 + hlen + 4 * 5, 4);
    assert_float_equal(v, 5, 0);
    free(buf);
    nb_release(a);
    nb_release(b);
}

static void saving_is_atomic_and_reports_unwritable_paths(void **state)
{
    (void)state;
    nb_tensor *a = nb_ones(NB_SHAPE(2), (nb_opts){});
    const char *name = "a";
    const char *bad = path_of("no/such/dir/x.safetensors");
    nb_clear_error();
    assert_int_equal(nb_safetensors_save(bad, &a, &name, 1), NB_IO);
    NB_ASSERT_ERROR_HAS(bad);
    NB_ASSERT_ERROR_HAS(strerror(ENOENT));
    /* an error before writing (a duplicate name) leaves an existing file alone */
    const char *p = path_of("keep.safetensors");
    NB_ASSERT_OK(nb_safetensors_save(p, &a, &name, 1));
    unsigned char *before, *after;
    size_t n1 = read_file(p, &before);
    nb_tensor *two[2] = {a, a};
    const char *dup[2] = {"x", "x"};
    assert_int_equal(nb_safetensors_save(p, two, dup, 2), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("'x' is used twice");
    size_t n2 = read_file(p, &after);
    assert_int_equal(n1, n2);
    assert_memory_equal(before, after, n1);
    free(before);
    free(after);
    assert_int_equal(access(path_of("keep.safetensors.tmp"), F_OK), -1);
    nb_release(a);
}

static void save_refuses_bad_arguments(void **state)
{
    (void)state;
    nb_tensor *a = nb_ones(NB_SHAPE(2), (nb_opts){});
    const char *name = "a", *meta = "__metadata__", *empty = "";
    const char *p = path_of("args.safetensors");
    nb_tensor *none = NULL;
    assert_int_equal(nb_safetensors_save(NULL, &a, &name, 1), NB_NULL_ARGUMENT);
    assert_int_equal(nb_safetensors_save(p, NULL, &name, 1), NB_NULL_ARGUMENT);
    assert_int_equal(nb_safetensors_save(p, &a, NULL, 1), NB_NULL_ARGUMENT);
    assert_int_equal(nb_safetensors_save(p, &a, &name, -1), NB_INVALID_ARGUMENT);
    assert_int_equal(nb_safetensors_save(p, &none, &name, 1), NB_NULL_ARGUMENT);
    assert_int_equal(nb_safetensors_save(p, &a, &meta, 1), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("reserved");
    assert_int_equal(nb_safetensors_save(p, &a, &empty, 1), NB_INVALID_ARGUMENT);
    const char *bad_utf8 = "\xff\xfe";
    assert_int_equal(nb_safetensors_save(p, &a, &bad_utf8, 1), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("UTF-8");
    nb_tensor **ts;
    char **ns;
    int32_t n;
    assert_int_equal(nb_safetensors_load(NULL, NULL, &ts, &ns, &n), NB_NULL_ARGUMENT);
    assert_int_equal(nb_safetensors_load(p, NULL, NULL, &ns, &n), NB_NULL_ARGUMENT);
    assert_int_equal(nb_safetensors_load(path_of("missing.safetensors"), NULL, &ts, &ns, &n),
                     NB_IO);
    NB_ASSERT_ERROR_HAS("missing.safetensors");
    NB_ASSERT_OK(nb_safetensors_save(p, &a, &name, 1));
    assert_int_not_equal(nb_safetensors_load(p, "cdua", &ts, &ns, &n), NB_OK);
    NB_ASSERT_ERROR_HAS("cdua");
    nb_safetensors_free(NULL, NULL, 0);
    nb_release(a);
    nb_clear_error();
}

/* ---- corrupt files ---- */

typedef struct bad_case {
    const char *what;
    const char *header;
    size_t data_len;
    nb_status status;
    const char *needle;
} bad_case;

static void corrupt_files_are_refused_with_precise_messages(void **state)
{
    (void)state;
    static const bad_case cases[] = {
        {"not json", "hello", 0, NB_FORMAT, "does not start with '{'"},
        {"unclosed object", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}", 4,
         NB_FORMAT, "ends early"},
        {"trailing comma", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},}", 4,
         NB_FORMAT, "expected '\"'"},
        {"missing colon", "{\"a\" {\"dtype\":\"F32\"}}", 0, NB_FORMAT, "expected ':'"},
        {"unterminated string", "{\"a", 0, NB_FORMAT, "never ends"},
        {"bad escape", "{\"a\\q\":{}}", 0, NB_FORMAT, "escape"},
        {"garbage after", "{}x", 0, NB_FORMAT, "extra bytes"},
        {"unknown dtype", "{\"a\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
         NB_FORMAT, "unknown dtype \"F33\""},
        {"dtype not a string", "{\"a\":{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
         NB_FORMAT, "expected '\"'"},
        {"foreign dtype", "{\"a\":{\"dtype\":\"I16\",\"shape\":[1],\"data_offsets\":[0,2]}}", 2,
         NB_DTYPE_UNSUPPORTED, "I16"},
        {"offsets past the end",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, NB_FORMAT,
         "past the end"},
        {"offsets not matching the shape",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}", 12, NB_FORMAT,
         "span 12 bytes"},
        {"offsets reversed", "{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,0]}}", 4,
         NB_FORMAT, "end before they begin"},
        {"gap between tensors",
         "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
         "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[3,5]}}", 5, NB_FORMAT,
         "starts at data offset 3, expected 2"},
        {"overlapping tensors",
         "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
         "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[1,3]}}", 3, NB_FORMAT,
         "starts at data offset 1"},
        {"trailing data", "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 6,
         NB_FORMAT, "cover 2 of the 6"},
        {"duplicate names",
         "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
         "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2, NB_FORMAT,
         "'a' appears twice"},
        {"duplicate key", "{\"a\":{\"dtype\":\"U8\",\"dtype\":\"U8\"}}", 0, NB_FORMAT, "twice"},
        {"missing offsets", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1, NB_FORMAT,
         "no \"data_offsets\""},
        {"negative dim", "{\"a\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,1]}}", 1,
         NB_FORMAT, "negative"},
        {"fractional dim", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1.5],\"data_offsets\":[0,1]}}", 1,
         NB_FORMAT, "not an integer"},
        {"huge dim",
         "{\"a\":{\"dtype\":\"U8\",\"shape\":[99999999999999999999],\"data_offsets\":[0,1]}}", 1,
         NB_FORMAT, "too large"},
        {"huge shape", "{\"a\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296],"
                       "\"data_offsets\":[0,8]}}", 8, NB_FORMAT, "too large"},
        {"too many dims", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                          "\"data_offsets\":[0,1]}}", 1, NB_FORMAT, "more than 8"},
        {"three offsets", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,2]}}", 1,
         NB_FORMAT, "more than two"},
        {"metadata not strings", "{\"__metadata__\":{\"k\":1}}", 0, NB_FORMAT, "strings"},
        {"lone surrogate", "{\"\\ud800\":{}}", 0, NB_FORMAT, "surrogate"},
        {"nested too deep",
         "{\"a\":{\"x\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["
         "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],"
         "\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[0,1]}}", 1, NB_FORMAT, "deeper than 64"},
    };
    const char *p = path_of("bad.safetensors");
    unsigned char data[64] = {0};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        write_st(p, cases[c].header, data, cases[c].data_len, true);
        nb_tensor **ts = (nb_tensor **)1;
        char **ns = (char **)1;
        int32_t n = -1;
        nb_status st = load(p, &ts, &ns, &n);
        if (st != cases[c].status || !strstr(nb_last_error(), cases[c].needle))
            fail_msg("%s: got %s \"%s\", expected %s with \"%s\"", cases[c].what,
                     nb_status_str(st), nb_last_error(), nb_status_str(cases[c].status),
                     cases[c].needle);
        assert_null(ts); /* nothing handed out on failure */
        assert_null(ns);
        assert_int_equal(n, 0);
    }
    /* BOOL bytes must be 0 or 1 */
    data[1] = 2;
    write_st(p, "{\"b\":{\"dtype\":\"BOOL\",\"shape\":[2],\"data_offsets\":[0,2]}}", data, 2, true);
    nb_tensor **ts;
    char **ns;
    int32_t n;
    assert_int_equal(load(p, &ts, &ns, &n), NB_FORMAT);
    NB_ASSERT_ERROR_HAS("byte 2 at element 1");
    /* headers: shorter than 8 bytes, longer than the file */
    write_file(p, "\x10\x00\x00", 3);
    assert_int_equal(load(p, &ts, &ns, &n), NB_FORMAT);
    NB_ASSERT_ERROR_HAS("3 bytes, too short");
    write_file(p, "\xff\xff\xff\xff\xff\xff\xff\xff{}", 10);
    assert_int_equal(load(p, &ts, &ns, &n), NB_FORMAT);
    NB_ASSERT_ERROR_HAS("exceeds the 2 bytes");
}

static void every_truncation_and_byte_flip_is_handled(void **state)
{
    (void)state;
    nb_tensor *ts[3] = {nb_arange(0, 5, 1, (nb_opts){}),
                        nb_ones(NB_SHAPE(2, 2), (nb_opts){.dtype = NB_DTYPE_I64}),
                        nb_zeros(NB_SHAPE(3), (nb_opts){.dtype = NB_DTYPE_BOOL})};
    const char *names[3] = {"w", "idx", "mask"};
    const char *good = path_of("good.safetensors"), *p = path_of("cut.safetensors");
    NB_ASSERT_OK(nb_safetensors_save(good, ts, names, 3));
    for (int i = 0; i < 3; i++)
        nb_release(ts[i]);
    unsigned char *buf;
    size_t size = read_file(good, &buf);
    nb_tensor **got;
    char **ns;
    int32_t n;
    /* every strict prefix is a broken file: an error, never a crash or a leak */
    for (size_t cut = 0; cut < size; cut++) {
        write_file(p, buf, cut);
        if (load(p, &got, &ns, &n) != NB_FORMAT)
            fail_msg("file cut at %zu of %zu bytes: %s", cut, size, nb_last_error());
    }
    /* flipping any header byte either still parses (spaces, digits) or fails cleanly */
    uint64_t hlen = 0;
    for (int k = 7; k >= 0; k--)
        hlen = hlen << 8 | buf[k];
    int refused = 0;
    for (size_t at = 0; at < 8 + hlen; at++) {
        static const unsigned char flips[] = {0x01, 0x20, 0x80, 0xff};
        for (size_t f = 0; f < sizeof flips; f++) {
            buf[at] ^= flips[f];
            write_file(p, buf, size);
            nb_status st = load(p, &got, &ns, &n);
            if (st == NB_OK)
                nb_safetensors_free(got, ns, n);
            else
                refused++;
            buf[at] ^= flips[f];
        }
    }
    assert_true(refused > (int)hlen); /* most flips break it */
    free(buf);
    nb_clear_error();
}

static void metadata_and_unknown_keys_are_accepted(void **state)
{
    (void)state;
    const char *p = path_of("meta.safetensors");
    const float v[2] = {1, 2};
    write_st(p, "{ \"__metadata__\" : {\"format\":\"pt\",\"note\":\"\\u00e9\\ud83d\\ude00\"},\n"
                "\"x\\u0041\": {\"extra\": [1, {\"k\": null}, true, -2.5e3], \"dtype\": \"F32\","
                " \"data_offsets\": [0, 8], \"shape\": [2]}}",
             v, sizeof v, false);
    nb_tensor **ts;
    char **ns;
    int32_t n;
    NB_ASSERT_OK(load(p, &ts, &ns, &n));
    assert_int_equal(n, 1);
    assert_string_equal(ns[0], "xA");
    float got[2];
    NB_ASSERT_OK(nb_tensor_copy_to_host(ts[0], got, sizeof got));
    assert_float_equal(got[1], 2, 0);
    nb_safetensors_free(ts, ns, n);
}

/* ---- module checkpoints ---- */

static nb_module *mlp(int64_t hidden)
{
    nb_opts o = {0};
    return nb_sequential_new((nb_module *[]){nb_linear_new(4, hidden, true, o), nb_relu_new(),
                                             nb_batch_norm1d_new(hidden, 0, 0, o),
                                             nb_linear_new(hidden, 2, true, o)}, 4);
}

static void module_checkpoint_round_trips_in_place(void **state)
{
    (void)state;
    nb_manual_seed(1);
    nb_module *a = mlp(8);
    nb_manual_seed(2);
    nb_module *b = mlp(8);
    /* make a buffer differ too: one training-mode forward updates the running stats */
    nb_tensor *x = nb_randn(NB_SHAPE(5, 4), (nb_opts){});
    nb_tensor *y = nb_module_forward(a, x);
    assert_non_null(y);
    nb_release(y);
    nb_release(x);
    const char *p = path_of("mlp.safetensors");
    NB_ASSERT_OK(nb_module_save(a, p));
    int32_t n = nb_module_state_count(b);
    nb_tensor *before[16];
    for (int32_t i = 0; i < n; i++)
        before[i] = nb_module_state(b, i, NULL);
    assert_false(nb_equal(nb_module_parameter(a, 0), nb_module_parameter(b, 0)));
    /* an optimizer holding b's parameters sees the loaded values */
    nb_optim *opt = nb_sgd_new_for(b, (nb_sgd_opts){.lr = 0.1});
    NB_ASSERT_OK(nb_module_load(b, p));
    for (int32_t i = 0; i < n; i++) {
        const char *name;
        nb_tensor *t = nb_module_state(b, i, &name);
        assert_ptr_equal(t, before[i]); /* copied into the same tensors */
        if (!nb_equal(t, nb_module_state(a, i, NULL)))
            fail_msg("%s differs after loading", name);
    }
    assert_true(nb_tensor_requires_grad(nb_module_parameter(b, 0)));
    assert_true(nb_tensor_is_leaf(nb_module_parameter(b, 0)));
    nb_optim_free(opt);
    nb_module_free(a);
    nb_module_free(b);
}

static void module_load_refuses_mismatched_checkpoints(void **state)
{
    (void)state;
    nb_module *small = mlp(6), *model = mlp(8);
    const char *p = path_of("small.safetensors");
    NB_ASSERT_OK(nb_module_save(small, p));
    nb_tensor *w = nb_clone(nb_module_parameter(model, 0));
    nb_clear_error();
    assert_int_equal(nb_module_load(model, p), NB_SHAPE_MISMATCH);
    NB_ASSERT_ERROR_HAS("0.weight: checkpoint has [6, 4], model has [8, 4]");
    assert_true(nb_equal(w, nb_module_parameter(model, 0))); /* nothing was copied */
    nb_release(w);

    /* a checkpoint lacking a name, or holding one the model lacks */
    nb_tensor *t = nb_zeros(NB_SHAPE(8, 4), (nb_opts){});
    const char *name = "0.weight";
    NB_ASSERT_OK(nb_safetensors_save(p, &t, &name, 1));
    nb_clear_error();
    assert_int_equal(nb_module_load(model, p), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("no tensor '0.bias'");
    int32_t n = nb_module_state_count(model);
    nb_tensor *all[16];
    const char *names[17];
    for (int32_t i = 0; i < n; i++)
        all[i] = nb_module_state(model, i, &names[i]);
    all[n] = t;
    names[n] = "extra.weight";
    NB_ASSERT_OK(nb_safetensors_save(p, all, names, n + 1));
    nb_clear_error();
    assert_int_equal(nb_module_load(model, p), NB_INVALID_ARGUMENT);
    NB_ASSERT_ERROR_HAS("'extra.weight', which the model does not have");
    nb_release(t);
    assert_int_equal(nb_module_load(model, path_of("nope.safetensors")), NB_IO);
    assert_int_equal(nb_module_load(NULL, p), NB_NULL_ARGUMENT);
    assert_int_equal(nb_module_load(model, NULL), NB_NULL_ARGUMENT);
    assert_int_equal(nb_module_save(NULL, p), NB_NULL_ARGUMENT);
    nb_module_free(small);
    nb_module_free(model);
    nb_clear_error();
}

static const char *second_device(void)
{
    static char buf[32];
    static const char *const types[] = {"cuda", "opencl"};
    for (int k = 0; k < 2; k++) {
        int n = nb_device_count(types[k]);
        nb_clear_error();
        if (n > 0) {
            snprintf(buf, sizeof buf, "%s:0", types[k]);
            return buf;
        }
    }
    return NULL;
}

/* Tensors on another device save through host memory and load onto the device asked for;
 * a module there loads a CPU checkpoint into its own tensors. */
static void tensors_on_other_devices_save_and_load(void **state)
{
    (void)state;
    const char *dev = second_device();
    if (!dev)
        skip();
    nb_tensor *a = nb_arange(0, 12, 1, (nb_opts){.device = dev});
    nb_tensor *v = nb_view(a, NB_SHAPE(3, 4));
    nb_tensor *at = nb_transpose(v, 0, 1); /* strided on the device */
    const char *name = "t";
    const char *p = path_of("dev.safetensors");
    NB_ASSERT_OK(nb_safetensors_save(p, &at, &name, 1));
    nb_tensor **ts;
    char **ns;
    int32_t n;
    NB_ASSERT_OK(nb_safetensors_load(p, dev, &ts, &ns, &n));
    assert_string_equal(nb_tensor_device(ts[0]), dev);
    nb_tensor *want = nb_contiguous(at);
    assert_true(nb_equal(ts[0], want));
    nb_safetensors_free(ts, ns, n);
    nb_release(want);
    nb_release(v);
    nb_release(at);
    nb_release(a);

    nb_module *cpu = mlp(3), *there = mlp(3);
    NB_ASSERT_OK(nb_module_to(there, dev));
    p = path_of("mlp_cpu.safetensors");
    NB_ASSERT_OK(nb_module_save(cpu, p));
    NB_ASSERT_OK(nb_module_load(there, p));
    for (int32_t i = 0; i < nb_module_state_count(cpu); i++) {
        nb_tensor *t = nb_module_state(there, i, NULL);
        assert_string_equal(nb_tensor_device(t), dev);
        nb_tensor *host = nb_to_device(t, "cpu");
        assert_true(nb_equal(host, nb_module_state(cpu, i, NULL)));
        nb_release(host);
    }
    nb_module_free(cpu);
    nb_module_free(there);
}

/* ---- interop: an independent reader and writer in Python (struct + json only) ---- */

static void python_reads_and_writes_the_same_format(void **state)
{
    (void)state;
    if (access("/usr/bin/python3", X_OK) != 0)
        skip();
    const float f[3] = {0.5f, -1.25f, 3.0f};
    const int64_t i[2] = {-7, 1LL << 40};
    const uint8_t b[2] = {1, 0};
    nb_tensor *ts[3] = {nb_from_data(f, NB_SHAPE(3, 1), (nb_opts){}),
                        nb_from_data(i, NB_SHAPE(2), (nb_opts){.dtype = NB_DTYPE_I64}),
                        nb_from_data(b, NB_SHAPE(2), (nb_opts){.dtype = NB_DTYPE_BOOL})};
    const char *names[3] = {"layer.w", "idx", "mask"};
    const char *from_c = path_of("from_c.safetensors"), *from_py = path_of("from_py.safetensors");
    NB_ASSERT_OK(nb_safetensors_save(from_c, ts, names, 3));
    for (int k = 0; k < 3; k++)
        nb_release(ts[k]);
    /* reads what C wrote, checks it, writes a file of its own in the reference layout */
    static const char script[] =
        "import json, struct, sys\n"
        "raw = open(sys.argv[1], 'rb').read()\n"
        "n = struct.unpack('<Q', raw[:8])[0]\n"
        "assert n % 8 == 0, n\n"
        "h = json.loads(raw[8:8 + n])\n"
        "data = raw[8 + n:]\n"
        "fmt = {'F32': 'f', 'F64': 'd', 'I32': 'i', 'I64': 'q', 'BOOL': '?', 'U8': 'B'}\n"
        "def get(k):\n"
        "    e = h[k]; b0, b1 = e['data_offsets']\n"
        "    c = struct.calcsize('<' + fmt[e['dtype']])\n"
        "    return e['shape'], list(struct.unpack('<%d%s' % ((b1 - b0) // c, fmt[e['dtype']]), data[b0:b1]))\n"
        "assert get('layer.w') == ([3, 1], [0.5, -1.25, 3.0]), get('layer.w')\n"
        "assert get('idx') == ([2], [-7, 1 << 40]), get('idx')\n"
        "assert get('mask') == ([2], [True, False]), get('mask')\n"
        "t = {'b': ('F64', [2], struct.pack('<2d', 1.5, -2.5)), 'a': ('I32', [], struct.pack('<i', 42))}\n"
        "hdr, blob = {'__metadata__': {'format': 'pt'}}, b''\n"
        "for k, (dt, sh, by) in t.items():\n"
        "    hdr[k] = {'dtype': dt, 'shape': sh, 'data_offsets': [len(blob), len(blob) + len(by)]}\n"
        "    blob += by\n"
        "hj = json.dumps(hdr).encode()\n"
        "hj += b' ' * (-len(hj) % 8)\n"
        "open(sys.argv[2], 'wb').write(struct.pack('<Q', len(hj)) + hj + blob)\n";
    const char *script_path = path_of("check.py");
    write_file(script_path, script, sizeof script - 1);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s' '%s' '%s'", script_path, from_c, from_py);
    assert_int_equal(system(cmd), 0);
    nb_tensor **got;
    char **ns;
    int32_t n;
    NB_ASSERT_OK(load(from_py, &got, &ns, &n));
    assert_int_equal(n, 2);
    double v[2];
    int which_b = strcmp(ns[0], "b") == 0 ? 0 : 1;
    NB_ASSERT_OK(nb_tensor_copy_to_host(got[which_b], v, sizeof v));
    assert_float_equal(v[0], 1.5, 0);
    assert_float_equal(v[1], -2.5, 0);
    assert_int_equal(nb_tensor_ndim(got[1 - which_b]), 0);
    double a;
    NB_ASSERT_OK(nb_item(got[1 - which_b], &a));
    assert_float_equal(a, 42, 0);
    nb_safetensors_free(got, ns, n);
}


/* ---- out of memory anywhere ---- */

/* Modules, their repr, a training step with two optimizers and a scheduler, a checkpoint
 * saved and loaded: every call checked, everything freed whatever failed. */
static nb_status oom_workload(void)
{
    nb_opts o = {0};
    nb_status st = NB_OK;
    nb_module *net = nb_sequential_new(
        (nb_module *[]){nb_conv2d_new(1, 2, 3, 3, (nb_conv2d_opts){.padding = {1, 1}}, true, o),
                        nb_batch_norm2d_new(2, 0, 0, o), nb_relu_new(),
                        nb_max_pool2d_new((nb_pool2d_opts){.kernel = {2, 2}}),
                        nb_flatten_new(1, -1), nb_dropout_new(0.5), nb_linear_new(8, 3, true, o)},
        7);
    nb_module *root = net ? nb_module_new("Net", NULL, NULL) : NULL;
    if (root && (st = nb_module_add(root, "body", net)) != NB_OK) {
        nb_module_free(net);
        nb_module_free(root);
        return st;
    }
    if (!root) {
        nb_module_free(net);
        return nb_last_status();
    }
    char *repr = nb_module_str(root);
    nb_free(repr);
    nb_tensor *x = nb_ones(NB_SHAPE(2, 1, 4, 4), o);
    nb_tensor *y = nb_module_forward(net, x);
    nb_tensor *loss = y ? nb_sum(y, NULL, 0, false) : NULL;
    if (!repr || !loss)
        st = nb_last_status();
    if (st == NB_OK)
        st = nb_backward(loss, NULL, (nb_backward_opts){0});
    int32_t n = nb_module_parameter_count(root);
    nb_tensor *ps[8];
    for (int32_t i = 0; st == NB_OK && i < n && i < 8; i++)
        ps[i] = nb_module_parameter(root, i);
    nb_optim *sgd = st == NB_OK ? nb_sgd_new_for(root, (nb_sgd_opts){.lr = 0.1, .momentum = 0.9})
                                : NULL;
    nb_optim *adam = st == NB_OK && n > 0 ? nb_adam_new(ps, n, (nb_adam_opts){0}) : NULL;
    nb_lr_scheduler *sched = adam ? nb_cosine_annealing_lr_new(adam, 4, 0) : NULL;
    if (st == NB_OK && (!sgd || !adam || !sched))
        st = nb_last_status();
    if (st == NB_OK && (st = nb_optim_step(sgd)) == NB_OK && (st = nb_optim_step(adam)) == NB_OK)
        st = nb_lr_scheduler_step(sched);
    const char *p = path_of("oom.safetensors");
    if (st == NB_OK && (st = nb_module_save(root, p)) == NB_OK)
        st = nb_module_load(root, p);
    nb_tensor **ts = NULL;
    char **ns = NULL;
    int32_t nt = 0;
    if (st == NB_OK)
        st = nb_safetensors_load(p, NULL, &ts, &ns, &nt);
    nb_safetensors_free(ts, ns, nt);
    nb_lr_scheduler_free(sched);
    nb_optim_free(sgd);
    nb_optim_free(adam);
    nb_release(loss);
    nb_release(y);
    nb_release(x);
    nb_module_free(root);
    return st;
}

static void out_of_memory_anywhere_fails_cleanly_without_leaks(void **state)
{
    (void)state;
    nb_test_every_allocation_fails_cleanly(oom_workload, 100);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        NB_TEST(every_dtype_round_trips),
        NB_TEST(file_has_the_safetensors_layout),
        NB_TEST(saving_is_atomic_and_reports_unwritable_paths),
        NB_TEST(save_refuses_bad_arguments),
        NB_TEST(corrupt_files_are_refused_with_precise_messages),
        NB_TEST(every_truncation_and_byte_flip_is_handled),
        NB_TEST(metadata_and_unknown_keys_are_accepted),
        NB_TEST(module_checkpoint_round_trips_in_place),
        NB_TEST(module_load_refuses_mismatched_checkpoints),
        NB_TEST(tensors_on_other_devices_save_and_load),
        NB_TEST(python_reads_and_writes_the_same_format),
        NB_TEST(out_of_memory_anywhere_fails_cleanly_without_leaks),
    };
    int failed = cmocka_run_group_tests(tests, make_dir, remove_dir);
    return failed || nb_shutdown() != NB_OK;
}
