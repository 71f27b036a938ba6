/* Secrets at rest: Mender's format (contract §6 vector), AES-256-GCM with owner binding, key
 * rotation, key settings and the key file. Foreign vectors (GCM blob, key ids) were produced with
 * Python's `cryptography`/`hashlib`; key-setting error texts with Go's encoding/base64 as Mender
 * calls it. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "iot-manager/crypto.h"

/* the acceptance-test key of Mender's iot-manager */
#define K_TEXT   "+mg+KXQM8/7A+uqs1bJzfH0KW9NclMEVRjkmqhfpjDg="
#define K_ID     1691155026
#define K2_TEXT  "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=" /* bytes 00..1f */
#define K2_ID    208218922
#define OID_TEXT "6ba7b812-9dad-11d1-80b4-00c04fd430c8"

/* contract §6: K, P = "secret", IV = 00 01 .. 0f */
static const char legacy_vector_hex[] =
    "01000102030405060708090a0b0c0d0e0f9df17603c2952a9fe6930794aa97ff5bdabed06d7fb41a388320d2c4"
    "d5634d488e5f1ee0e8681ebb09fa2b13f3fdc2a9031646a24cca008d7ff2c7d06b50828249c7722bb3f2";

/* Python: nonce a0..ab || AESGCM(K).encrypt(nonce, b"secret-gcm", b"tenant-a\0" + OID bytes) */
static const char gcm_vector_hex[] =
    "a0a1a2a3a4a5a6a7a8a9aaabc6ad65ea06fe7186da8a6a68b34d63e40da50cf7a95c86de2155";

static size_t from_hex(const char *hex, uint8_t *out, size_t cap)
{
    size_t n = strlen(hex) / 2;
    assert_true(n <= cap);
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        assert_int_equal(sscanf(hex + 2 * i, "%2x", &v), 1);
        out[i] = (uint8_t)v;
    }
    return n;
}

static struct crypto_key key_from(const char *text)
{
    struct crypto_key k;
    struct iot_error err = {0};
    assert_int_equal(crypto_key_parse(text, &k, &err), IOT_OK);
    return k;
}

static struct crypto_keyring ring(const char *primary, const char *fallback)
{
    struct crypto_keyring kr;
    memset(&kr, 0, sizeof kr);
    if (primary) {
        kr.has_primary = true;
        kr.primary = key_from(primary);
    }
    if (fallback) {
        kr.has_fallback = true;
        kr.fallback = key_from(fallback);
    }
    return kr;
}

static struct uuid oid(void)
{
    struct uuid u;
    assert_int_equal(uuid_parse(OID_TEXT, &u, NULL), IOT_OK);
    return u;
}

static struct uuid other_id(void)
{
    struct uuid u = oid();
    u.b[15] ^= 1;
    return u;
}

static void set_plain(struct secret *s, const char *text)
{
    memset(s, 0, sizeof *s);
    assert_int_equal(secret_set_plain(s, (const uint8_t *)text, strlen(text)), IOT_OK);
}

/* `s` as Mender stores a secret: `len` bytes of `blob` under its label, no key id. */
static void set_legacy(struct secret *s, const uint8_t *blob, size_t len)
{
    memset(s, 0, sizeof *s);
    assert_int_equal(secret_set_sealed(s, SECRET_ALG_LEGACY, false, 0, blob, len), IOT_OK);
}

static void assert_plain(const struct secret *s, const char *text)
{
    assert_int_equal(s->state, SECRET_PLAIN);
    assert_int_equal(s->len, strlen(text));
    assert_memory_equal(s->data, text, s->len);
}

/* --- Mender's format ---------------------------------------------------------------------- */

static void test_legacy_vector_encrypt(void **state)
{
    (void)state;
    struct crypto_key k = key_from(K_TEXT);
    uint8_t iv[16];
    uint8_t want[128];
    size_t want_len = from_hex(legacy_vector_hex, want, sizeof want);
    for (int i = 0; i < 16; i++)
        iv[i] = (uint8_t)i;
    uint8_t *blob = NULL;
    size_t len = 0;
    assert_int_equal(
        crypto_legacy_encrypt_iv(k.bytes, iv, (const uint8_t *)"secret", 6, &blob, &len), IOT_OK);
    assert_int_equal(len, 87);
    assert_int_equal(want_len, 87);
    assert_memory_equal(blob, want, len);
    free(blob);
}

static void test_legacy_vector_open(void **state)
{
    (void)state;
    uint8_t blob[128];
    size_t len = from_hex(legacy_vector_hex, blob, sizeof blob);
    struct uuid id = oid();
    /* under the primary key, and under the fallback key when the primary is another one */
    const struct crypto_keyring rings[] = {ring(K_TEXT, NULL), ring(K2_TEXT, K_TEXT),
                                           ring(K_TEXT, K2_TEXT)};
    for (size_t i = 0; i < sizeof rings / sizeof rings[0]; i++) {
        struct secret s;
        struct iot_error err = {0};
        set_legacy(&s, blob, len);
        /* Mender's blobs carry no owner binding: any tenant or integration opens them */
        assert_int_equal(crypto_open(&rings[i], "any-tenant", &id, &s, &err), IOT_OK);
        assert_plain(&s, "secret");
        secret_clear(&s);
    }
}

static void test_legacy_wrong_key_is_an_error(void **state)
{
    (void)state;
    uint8_t blob[128];
    size_t len = from_hex(legacy_vector_hex, blob, sizeof blob);
    struct uuid id = oid();
    struct crypto_key k2 = key_from(K2_TEXT);
    struct crypto_keyring rings[3];
    memset(rings, 0, sizeof rings);
    rings[0] = ring(K2_TEXT, NULL);
    rings[1] = ring(K2_TEXT, K2_TEXT);
    rings[2].has_fallback = true; /* fallback only */
    rings[2].fallback = k2;
    for (size_t i = 0; i < 3; i++) {
        struct secret s;
        struct iot_error err = {0};
        set_legacy(&s, blob, len);
        assert_int_equal(crypto_open(&rings[i], "", &id, &s, &err), IOT_ERR_CRYPTO);
        assert_string_equal(err.msg, "unable to decrypt the data");
        /* never garbage: the secret is left sealed as it was */
        assert_int_equal(s.state, SECRET_SEALED);
        assert_int_equal(s.len, len);
        assert_memory_equal(s.data, blob, len);
        secret_clear(&s);
    }
}

static void test_legacy_tampered_is_an_error(void **state)
{
    (void)state;
    uint8_t blob[128];
    size_t len = from_hex(legacy_vector_hex, blob, sizeof blob);
    struct crypto_keyring kr = ring(K_TEXT, NULL);
    struct uuid id = oid();
    /* IV, ciphertext and MAC bytes */
    const size_t positions[] = {1, 16, 17, 22, 23, 86};
    for (size_t i = 0; i < sizeof positions / sizeof positions[0]; i++) {
        struct secret s;
        blob[positions[i]] ^= 0x01;
        set_legacy(&s, blob, len);
        assert_int_equal(crypto_open(&kr, "", &id, &s, NULL), IOT_ERR_CRYPTO);
        assert_int_equal(s.state, SECRET_SEALED);
        secret_clear(&s);
        blob[positions[i]] ^= 0x01;
    }
}

static void test_legacy_plaintext_passes_through(void **state)
{
    (void)state;
    struct uuid id = oid();
    uint8_t eighty[80];
    memset(eighty, 'x', sizeof eighty);
    eighty[0] = 0x01; /* looks like Mender's version byte but too short to be ciphertext */
    uint8_t starts_otherwise[100];
    memset(starts_otherwise, 0x01, sizeof starts_otherwise);
    starts_otherwise[0] = 0x02;
    const struct {
        const uint8_t *data;
        size_t len;
    } blobs[] = {
        {(const uint8_t *)"", 0},     {(const uint8_t *)"short", 5},
        {(const uint8_t *)"\x01", 1}, {(const uint8_t *)"HostName=x;SharedAccessKeyName=y", 33},
        {eighty, sizeof eighty},      {starts_otherwise, sizeof starts_otherwise},
    };
    const struct crypto_keyring rings[] = {ring(NULL, NULL), ring(K_TEXT, NULL),
                                           ring(K_TEXT, K2_TEXT)};
    for (size_t r = 0; r < sizeof rings / sizeof rings[0]; r++) {
        for (size_t i = 0; i < sizeof blobs / sizeof blobs[0]; i++) {
            struct secret s;
            struct iot_error err = {0};
            set_legacy(&s, blobs[i].data, blobs[i].len);
            assert_int_equal(crypto_open(&rings[r], "t", &id, &s, &err), IOT_OK);
            assert_int_equal(s.state, SECRET_PLAIN);
            assert_int_equal(s.len, blobs[i].len);
            if (blobs[i].len)
                assert_memory_equal(s.data, blobs[i].data, blobs[i].len);
            secret_clear(&s);
        }
    }
}

static void test_legacy_ciphertext_without_keys_is_an_error(void **state)
{
    (void)state;
    uint8_t blob[128];
    size_t len = from_hex(legacy_vector_hex, blob, sizeof blob);
    struct crypto_keyring none = ring(NULL, NULL);
    struct uuid id = oid();
    struct secret s;
    struct iot_error err = {0};
    set_legacy(&s, blob, len);
    assert_int_equal(crypto_open(&none, "", &id, &s, &err), IOT_ERR_CRYPTO);
    assert_int_equal(crypto_open(NULL, "", &id, &s, &err), IOT_ERR_CRYPTO);
    assert_int_equal(s.state, SECRET_SEALED);
    secret_clear(&s);
}

static void test_write_legacy(void **state)
{
    (void)state;
    struct crypto_keyring kr = ring(K_TEXT, NULL);
    kr.write_legacy = true;
    struct uuid id = oid();
    const char *plains[] = {"", "secret", "a longer secret of more than one AES block, 48 bytes"};
    for (size_t i = 0; i < 3; i++) {
        struct secret s;
        struct iot_error err = {0};
        set_plain(&s, plains[i]);
        assert_int_equal(crypto_seal(&kr, "t", &id, &s, &err), IOT_OK);
        assert_int_equal(s.state, SECRET_SEALED);
        assert_string_equal(s.algorithm, SECRET_ALG_LEGACY);
        assert_false(s.has_key_id);
        assert_int_equal(s.len, 81 + strlen(plains[i]));
        assert_int_equal(s.data[0], 0x01);
        /* Mender's read path takes it, also as the fallback key during a rotation */
        struct secret copy = {0};
        assert_int_equal(secret_copy(&copy, &s), IOT_OK);
        struct crypto_keyring rotated = ring(K2_TEXT, K_TEXT);
        assert_int_equal(crypto_open(&kr, "other", &id, &s, &err), IOT_OK);
        assert_plain(&s, plains[i]);
        assert_int_equal(crypto_open(&rotated, "other", &id, &copy, &err), IOT_OK);
        assert_plain(&copy, plains[i]);
        secret_clear(&s);
        secret_clear(&copy);
    }
}

/* --- no key: Mender's plaintext label -------------------------------------------------------- */

static void test_no_key_writes_plaintext_label(void **state)
{
    (void)state;
    struct uuid id = oid();
    /* a fallback alone does not encrypt, as in Mender */
    const struct crypto_keyring rings[] = {ring(NULL, NULL), ring(NULL, K_TEXT)};
    for (size_t i = 0; i < 2; i++) {
        struct secret s;
        set_plain(&s, "plain secret");
        assert_int_equal(crypto_seal(&rings[i], "t", &id, &s, NULL), IOT_OK);
        assert_int_equal(s.state, SECRET_SEALED);
        assert_string_equal(s.algorithm, SECRET_ALG_LEGACY);
        assert_false(s.has_key_id);
        assert_int_equal(s.len, 12);
        assert_memory_equal(s.data, "plain secret", 12);
        assert_int_equal(crypto_open(&rings[i], "t", &id, &s, NULL), IOT_OK);
        assert_plain(&s, "plain secret");
        secret_clear(&s);
    }
    struct secret s;
    set_plain(&s, "x");
    assert_int_equal(crypto_seal(NULL, NULL, NULL, &s, NULL), IOT_OK);
    assert_string_equal(s.algorithm, SECRET_ALG_LEGACY);
    secret_clear(&s);
}

static void test_no_key_refuses_ciphertext_shaped_plaintext(void **state)
{
    (void)state;
    /* it could never be read back: crypto_open would demand that it authenticates */
    uint8_t shaped[81];
    memset(shaped, 'z', sizeof shaped);
    shaped[0] = 0x01;
    struct crypto_keyring none = ring(NULL, NULL);
    struct uuid id = oid();
    struct secret s = {0};
    struct iot_error err = {0};
    assert_int_equal(secret_set_plain(&s, shaped, sizeof shaped), IOT_OK);
    assert_int_equal(crypto_seal(&none, "t", &id, &s, &err), IOT_ERR_CRYPTO);
    assert_int_equal(s.state, SECRET_PLAIN);
    /* with a key it is simply encrypted */
    struct crypto_keyring kr = ring(K_TEXT, NULL);
    assert_int_equal(crypto_seal(&kr, "t", &id, &s, &err), IOT_OK);
    assert_int_equal(crypto_open(&kr, "t", &id, &s, &err), IOT_OK);
    assert_int_equal(s.len, sizeof shaped);
    assert_memory_equal(s.data, shaped, sizeof shaped);
    secret_clear(&s);
}

/* --- AES-256-GCM ------------------------------------------------------------------------------ */

static void test_gcm_foreign_vector(void **state)
{
    (void)state;
    uint8_t blob[64];
    size_t len = from_hex(gcm_vector_hex, blob, sizeof blob);
    struct crypto_keyring kr = ring(K_TEXT, NULL);
    struct uuid id = oid();
    struct secret s = {0};
    struct iot_error err = {0};
    assert_int_equal(secret_set_sealed(&s, SECRET_ALG_GCM, true, K_ID, blob, len), IOT_OK);
    assert_int_equal(crypto_open(&kr, "tenant-a", &id, &s, &err), IOT_OK);
    assert_plain(&s, "secret-gcm");
    secret_clear(&s);
}

static void test_gcm_round_trip(void **state)
{
    (void)state;
    struct crypto_keyring kr = ring(K_TEXT, NULL);
    struct uuid id = oid();
    const char *plains[] = {"", "k", "SharedAccessKey bytes, long enough for several blocks ..."};
    for (size_t i = 0; i < 3; i++) {
        struct secret s;
        struct secret again;
        struct iot_error err = {0};
        size_t n = strlen(plains[i]);
        set_plain(&s, plains[i]);
        set_plain(&again, plains[i]);
        assert_int_equal(crypto_seal(&kr, "tenant-a", &id, &s, &err), IOT_OK);
        assert_int_equal(crypto_seal(&kr, "tenant-a", &id, &again, &err), IOT_OK);
        assert_int_equal(s.state, SECRET_SEALED);
        assert_string_equal(s.algorithm, SECRET_ALG_GCM);
        assert_true(s.has_key_id);
        assert_int_equal(s.key_id, K_ID);
        assert_int_equal(s.len, 12 + n + 16);
        if (n > 0)
            assert_memory_not_equal(s.data + 12, plains[i], n);
        /* a fresh nonce each time */
        assert_memory_not_equal(s.data, again.data, 12);
        assert_int_equal(crypto_open(&kr, "tenant-a", &id, &s, &err), IOT_OK);
        assert_plain(&s, plains[i]);
        assert_false(s.has_key_id);
        assert_int_equal(crypto_open(&kr, "tenant-a", &id, &again, &err), IOT_OK);
        assert_plain(&again, plains[i]);
        secret_clear(&s);
        secret_clear(&again);
    }
}

static void seal_one(const struct crypto_keyring *kr, const char *tenant, const struct uuid *id,
                     const char *plain, struct secret *s)
{
    set_plain(s, plain);
    assert_int_equal(crypto_seal(kr, tenant, id, s, NULL), IOT_OK);
    assert_int_equal(s->state, SECRET_SEALED);
}

static void test_gcm_tampering_fails(void **state)
{
    (void)state;
    struct crypto_keyring kr = ring(K_TEXT, NULL);
    struct uuid id = oid();
    struct secret sealed;
    seal_one(&kr, "tenant-a", &id, "0123456789", &sealed);
    assert_int_equal(sealed.len, 38);
    /* nonce, ciphertext, tag */
    const size_t positions[] = {0, 11, 12, 21, 22, 37};
    for (size_t i = 0; i < sizeof positions / sizeof positions[0]; i++) {
        struct secret s = {0};
        struct iot_error err = {0};
        assert_int_equal(secret_copy(&s, &sealed), IOT_OK);
        s.data[positions[i]] ^= 0x80;
        assert_int_equal(crypto_open(&kr, "tenant-a", &id, &s, &err), IOT_ERR_CRYPTO);
        assert_string_equal(err.msg, "unable to decrypt the data");
        assert_int_equal(s.state, SECRET_SEALED);
        secret_clear(&s);
    }
    /* truncated */
    for (size_t cut = 1; cut <= 11; cut += 10) {
        struct secret s = {0};
        struct iot_error err = {0};
        assert_int_equal(secret_copy(&s, &sealed), IOT_OK);
        s.len -= cut;
        assert_int_equal(crypto_open(&kr, "tenant-a", &id, &s, &err), IOT_ERR_CRYPTO);
        secret_clear(&s);
    }
    {
        struct secret s = {0};
        struct iot_error err = {0};
        assert_int_equal(secret_set_sealed(&s, SECRET_ALG_GCM, true, K_ID, sealed.data, 27),
                         IOT_OK);
        assert_int_equal(crypto_open(&kr, "tenant-a", &id, &s, &err), IOT_ERR_CRYPTO);
        assert_string_equal(err.msg, "cipher text is too short");
        secret_clear(&s);
    }
    /* the untouched blob still opens */
    assert_int_equal(crypto_open(&kr, "tenant-a", &id, &sealed, NULL), IOT_OK);
    assert_plain(&sealed, "0123456789");
    secret_clear(&sealed);
}

static void test_gcm_binds_owner(void **state)
{
    (void)state;
    struct crypto_keyring kr = ring(K_TEXT, NULL);
    struct uuid id = oid();
    struct uuid other = other_id();
    struct secret sealed;
    seal_one(&kr, "tenant-a", &id, "owned", &sealed);
    const struct {
        const char *tenant;
        const struct uuid *id;
    } wrong[] = {
        {"tenant-b", &id}, {"tenant-", &id}, {"tenant-aa", &id}, {"", &id}, {"tenant-a", &other},
    };
    for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; i++) {
        struct secret s = {0};
        struct iot_error err = {0};
        assert_int_equal(secret_copy(&s, &sealed), IOT_OK);
        assert_int_equal(crypto_open(&kr, wrong[i].tenant, wrong[i].id, &s, &err), IOT_ERR_CRYPTO);
        assert_int_equal(s.state, SECRET_SEALED);
        secret_clear(&s);
    }
    /* the empty tenant (open source) and NULL are the same owner */
    struct secret s;
    seal_one(&kr, NULL, &id, "os", &s);
    assert_int_equal(crypto_open(&kr, "", &id, &s, NULL), IOT_OK);
    assert_plain(&s, "os");
    secret_clear(&s);
    secret_clear(&sealed);
}

static void test_gcm_key_rotation(void **state)
{
    (void)state;
    struct crypto_keyring old_ring = ring(K_TEXT, NULL);
    struct crypto_keyring rotating = ring(K2_TEXT, K_TEXT);
    struct crypto_keyring new_only = ring(K2_TEXT, NULL);
    struct uuid id = oid();
    struct secret s;
    struct iot_error err = {0};
    seal_one(&old_ring, "t", &id, "rotate me", &s);
    assert_int_equal(s.key_id, K_ID);

    struct secret copy = {0};
    assert_int_equal(secret_copy(&copy, &s), IOT_OK);
    /* the old key is gone: the stored key id says which one is missing */
    assert_int_equal(crypto_open(&new_only, "t", &id, &copy, &err), IOT_ERR_CRYPTO);
    assert_non_null(strstr(err.msg, "1691155026"));
    assert_int_equal(copy.state, SECRET_SEALED);
    secret_clear(&copy);

    /* re-encrypt: open with the fallback, seal with the new primary */
    assert_int_equal(crypto_open(&rotating, "t", &id, &s, &err), IOT_OK);
    assert_plain(&s, "rotate me");
    assert_int_equal(crypto_seal(&rotating, "t", &id, &s, &err), IOT_OK);
    assert_true(s.has_key_id);
    assert_int_equal(s.key_id, K2_ID);
    assert_int_equal(crypto_open(&new_only, "t", &id, &s, &err), IOT_OK);
    assert_plain(&s, "rotate me");
    secret_clear(&s);
}

static void test_gcm_key_id_selects_key(void **state)
{
    (void)state;
    struct crypto_keyring kr = ring(K_TEXT, NULL);
    struct crypto_keyring both = ring(K2_TEXT, K_TEXT);
    struct uuid id = oid();
    struct secret s;
    seal_one(&kr, "t", &id, "x", &s);
    /* a wrong stored key id is not papered over by trying every key */
    struct secret copy = {0};
    assert_int_equal(secret_copy(&copy, &s), IOT_OK);
    copy.key_id = K2_ID;
    assert_int_equal(crypto_open(&both, "t", &id, &copy, NULL), IOT_ERR_CRYPTO);
    secret_clear(&copy);
    /* without a key id both keys are tried */
    assert_int_equal(secret_copy(&copy, &s), IOT_OK);
    copy.has_key_id = false;
    assert_int_equal(crypto_open(&both, "t", &id, &copy, NULL), IOT_OK);
    assert_plain(&copy, "x");
    secret_clear(&copy);
    /* no key at all */
    struct crypto_keyring none = ring(NULL, NULL);
    assert_int_equal(crypto_open(&none, "t", &id, &s, NULL), IOT_ERR_CRYPTO);
    secret_clear(&s);
}

/* --- states and labels ------------------------------------------------------------------------ */

static void test_unknown_algorithm(void **state)
{
    (void)state;
    struct crypto_keyring kr = ring(K_TEXT, K2_TEXT);
    struct uuid id = oid();
    const char *labels[] = {"AES_256_CBC", "", "aes_256_gcm"};
    for (size_t i = 0; i < 3; i++) {
        struct secret s = {0};
        struct iot_error err = {0};
        assert_int_equal(secret_set_sealed(&s, labels[i], false, 0, (const uint8_t *)"x", 1),
                         IOT_OK);
        assert_int_equal(crypto_open(&kr, "t", &id, &s, &err), IOT_ERR_CRYPTO);
        assert_int_equal(err.code, IOT_ERR_CRYPTO);
        assert_string_equal(err.msg, "unknown algorithm");
        assert_int_equal(s.state, SECRET_SEALED);
        secret_clear(&s);
    }
}

static void test_states_left_alone(void **state)
{
    (void)state;
    struct crypto_keyring kr = ring(K_TEXT, NULL);
    struct uuid id = oid();
    struct secret empty = {0};
    assert_int_equal(crypto_seal(&kr, "t", &id, &empty, NULL), IOT_OK);
    assert_int_equal(empty.state, SECRET_EMPTY);
    assert_null(empty.data);
    assert_int_equal(crypto_open(&kr, "t", &id, &empty, NULL), IOT_OK);
    assert_int_equal(empty.state, SECRET_EMPTY);

    struct secret plain;
    set_plain(&plain, "p");
    assert_int_equal(crypto_open(&kr, "t", &id, &plain, NULL), IOT_OK);
    assert_plain(&plain, "p");

    struct secret sealed;
    seal_one(&kr, "t", &id, "p", &sealed);
    struct secret before = {0};
    assert_int_equal(secret_copy(&before, &sealed), IOT_OK);
    assert_int_equal(crypto_seal(&kr, "t", &id, &sealed, NULL), IOT_OK);
    assert_int_equal(sealed.len, before.len);
    assert_memory_equal(sealed.data, before.data, before.len);
    secret_clear(&plain);
    secret_clear(&sealed);
    secret_clear(&before);
}

/* --- keys ------------------------------------------------------------------------------------- */

static void test_key_parse(void **state)
{
    (void)state;
    struct crypto_key std = key_from(K_TEXT);
    assert_int_equal(std.id, K_ID);
    assert_int_equal(crypto_key_id(std.bytes), K_ID);
    assert_int_equal(std.bytes[0], 0xfa);
    assert_int_equal(std.bytes[31], 0x38);
    struct crypto_key k2 = key_from(K2_TEXT);
    assert_int_equal(k2.id, K2_ID);
    for (int i = 0; i < 32; i++)
        assert_int_equal(k2.bytes[i], i);

    /* URL alphabet, padding optional, '=' anywhere and line breaks ignored, as Mender does */
    const char *same[] = {
        "+mg+KXQM8/7A+uqs1bJzfH0KW9NclMEVRjkmqhfpjDg",
        "-mg-KXQM8_7A-uqs1bJzfH0KW9NclMEVRjkmqhfpjDg",
        "-mg-KXQM8_7A-uqs1bJzfH0KW9NclMEVRjkmqhfpjDg=",
        "+mg+KXQM8/7A+uqs1bJzfH0KW9NclMEVRjkmqhfpjDg=\n",
        "+m=g+KXQM8/7A+uqs1bJzfH0KW9NclMEVRjkmqhfpjDg",
        "+mg+KXQM8/7A+uqs1bJz\r\nfH0KW9NclMEVRjkmqhfpjDg==",
    };
    for (size_t i = 0; i < sizeof same / sizeof same[0]; i++) {
        struct crypto_key k = key_from(same[i]);
        assert_memory_equal(k.bytes, std.bytes, CRYPTO_KEY_LEN);
        assert_int_equal(k.id, K_ID);
    }
}

static void test_key_parse_errors(void **state)
{
    (void)state;
    static const char bad_b64[] = "failed to base64-decode the AES encryption key: illegal base64 "
                                  "data at input byte ";
    static const char wrong_len[] = "AES encryption key has a wrong length, expected 32 bytes";
    static const struct {
        const char *text;
        const char *msg_tail; /* NULL: wrong length */
    } cases[] = {
        /* offsets as Go reports them for Mender's rewritten text */
        {"%", "0"},
        {"a", "0"},
        {"abcde", "4"},
        {"==a=b%", "2"},
        {"ab\nc\nd\ne", "7"},
        {"a\n", "1"},
        {"+mg+KXQM8/7A+uqs1bJz fH0KW9NclMEVRjkmqhfpjDg=", "20"},
        {"aa", NULL},
        {"", NULL},
        {"====", NULL},
        {"+mg+KXQM8/7A+uqs1bJzfH0KW9NclMEVRjkmqhfpjD", NULL},   /* 31 bytes */
        {"+mg+KXQM8/7A+uqs1bJzfH0KW9NclMEVRjkmqhfpjDgA", NULL}, /* 33 bytes */
        {"+mg+KXQM8/7A+uqs1bJzfH0KW9NclMEVRjkmqhfpjDg+mg+KXQM8/7A+uqs1bJzfH0KW9NclMEVRjkmqhfpjDg",
         NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct crypto_key k;
        memset(&k, 0xee, sizeof k);
        struct iot_error err = {0};
        assert_int_equal(crypto_key_parse(cases[i].text, &k, &err), IOT_ERR_CONFIG);
        assert_int_equal(err.code, IOT_ERR_CONFIG);
        char want[256];
        if (cases[i].msg_tail)
            snprintf(want, sizeof want, "%s%s", bad_b64, cases[i].msg_tail);
        else
            snprintf(want, sizeof want, "%s", wrong_len);
        if (strcmp(err.msg, want) != 0)
            fail_msg("case %zu: \"%s\", want \"%s\"", i, err.msg, want);
        assert_int_equal(k.bytes[0], 0xee); /* output untouched */
    }
}

static void test_key_ids_differ(void **state)
{
    (void)state;
    uint8_t a[CRYPTO_KEY_LEN] = {0};
    uint8_t b[CRYPTO_KEY_LEN] = {0};
    b[31] = 1;
    int32_t ia = crypto_key_id(a);
    int32_t ib = crypto_key_id(b);
    assert_true(ia >= 0);
    assert_true(ib >= 0);
    assert_int_not_equal(ia, ib);
    assert_int_equal(crypto_key_id(a), ia); /* stable */
}

static void test_equal_and_random(void **state)
{
    (void)state;
    assert_true(crypto_equal("abcd", "abcd", 4));
    assert_false(crypto_equal("abcd", "abce", 4));
    assert_false(crypto_equal("xbcd", "abcd", 4));
    assert_true(crypto_equal("a", "b", 0));

    uint8_t r1[32] = {0};
    uint8_t r2[32] = {0};
    uint8_t zero[32] = {0};
    assert_int_equal(crypto_random(r1, sizeof r1), IOT_OK);
    assert_int_equal(crypto_random(r2, sizeof r2), IOT_OK);
    assert_memory_not_equal(r1, zero, sizeof r1);
    assert_memory_not_equal(r1, r2, sizeof r1);
    assert_int_equal(crypto_random(r1, 0), IOT_OK);
}

/* --- key file --------------------------------------------------------------------------------- */

struct tmpdir {
    char dir[64];
    char path[128];
};

static void tmpdir_make(struct tmpdir *t)
{
    strcpy(t->dir, "/tmp/iotm-keyfile-XXXXXX");
    assert_non_null(mkdtemp(t->dir));
    snprintf(t->path, sizeof t->path, "%s/aes.key", t->dir);
}

static void tmpdir_remove(struct tmpdir *t)
{
    unlink(t->path);
    assert_int_equal(rmdir(t->dir), 0); /* also proves no temporary file was left behind */
}

static void write_file(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    assert_int_equal(fchmod(fd, mode), 0);
    close(fd);
}

/* The first line of the file at `path` into `text` (`cap` bytes). */
static void read_first_line(const char *path, char *text, size_t cap)
{
    memset(text, 0, cap);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    assert_non_null(fgets(text, (int)cap, f));
    fclose(f);
}

static void test_keyfile_create_and_reload(void **state)
{
    (void)state;
    struct tmpdir t;
    tmpdir_make(&t);
    mode_t old_umask = umask(0); /* the mode must not depend on the umask */
    struct crypto_key k1;
    struct crypto_key k2;
    bool created = false;
    struct iot_error err = {0};
    assert_int_equal(crypto_keyfile_load_or_create(t.path, &k1, &created, &err), IOT_OK);
    umask(old_umask);
    assert_true(created);
    assert_int_equal(k1.id, crypto_key_id(k1.bytes));

    struct stat st;
    assert_int_equal(stat(t.path, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_int_equal(st.st_size, 45); /* 44 base64 characters and a newline */

    /* the file holds exactly this key, in the key-setting format */
    char text[64];
    read_first_line(t.path, text, sizeof text);
    text[strcspn(text, "\n")] = '\0';
    struct crypto_key parsed = key_from(text);
    assert_memory_equal(parsed.bytes, k1.bytes, CRYPTO_KEY_LEN);

    assert_int_equal(crypto_keyfile_load_or_create(t.path, &k2, &created, &err), IOT_OK);
    assert_false(created);
    assert_memory_equal(k1.bytes, k2.bytes, CRYPTO_KEY_LEN);
    assert_int_equal(k1.id, k2.id);
    tmpdir_remove(&t);
}

static void test_keyfile_reads_given_key(void **state)
{
    (void)state;
    struct tmpdir t;
    tmpdir_make(&t);
    write_file(t.path, "  " K_TEXT "\r\n", 0400);
    struct crypto_key k;
    bool created = true;
    assert_int_equal(crypto_keyfile_load_or_create(t.path, &k, &created, NULL), IOT_OK);
    assert_false(created);
    assert_int_equal(k.id, K_ID);
    chmod(t.path, 0600);
    tmpdir_remove(&t);
}

static void test_keyfile_refused(void **state)
{
    (void)state;
    struct tmpdir t;
    tmpdir_make(&t);
    const mode_t modes[] = {0644, 0640, 0604, 0620, 0602};
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        write_file(t.path, K_TEXT "\n", modes[i]);
        struct crypto_key k;
        bool created = true;
        struct iot_error err = {0};
        assert_int_equal(crypto_keyfile_load_or_create(t.path, &k, &created, &err), IOT_ERR_CONFIG);
        assert_false(created);
        assert_non_null(strstr(err.msg, "group or others"));
        assert_null(strstr(err.msg, K_TEXT));
        /* not replaced by a new key either */
        char text[64];
        read_first_line(t.path, text, sizeof text);
        assert_string_equal(text, K_TEXT "\n");
    }

    /* bad content */
    const char *bad[] = {"", "\n", "not a key\n", K_TEXT "A\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_file(t.path, bad[i], 0600);
        struct crypto_key k;
        struct iot_error err = {0};
        assert_int_equal(crypto_keyfile_load_or_create(t.path, &k, NULL, &err), IOT_ERR_CONFIG);
        assert_non_null(strstr(err.msg, t.path));
    }

    /* a directory in its place */
    unlink(t.path);
    assert_int_equal(mkdir(t.path, 0700), 0);
    struct crypto_key k;
    struct iot_error err = {0};
    assert_int_not_equal(crypto_keyfile_load_or_create(t.path, &k, NULL, &err), IOT_OK);
    assert_int_equal(rmdir(t.path), 0);

    /* a missing directory */
    char missing[160];
    snprintf(missing, sizeof missing, "%s/no/such/aes.key", t.dir);
    assert_int_equal(crypto_keyfile_load_or_create(missing, &k, NULL, &err), IOT_ERR_IO);
    tmpdir_remove(&t);
}

static void test_keyfile_concurrent_creation(void **state)
{
    (void)state;
    enum { N = 6 };
    struct tmpdir t;
    tmpdir_make(&t);
    int start[2];
    int results[2];
    assert_int_equal(pipe(start), 0);
    assert_int_equal(pipe(results), 0);
    pid_t pids[N];
    for (int i = 0; i < N; i++) {
        pids[i] = fork();
        assert_true(pids[i] >= 0);
        if (pids[i] == 0) {
            char c;
            close(start[1]);
            /* all children start together once the parent closes the pipe */
            if (read(start[0], &c, 1) < 0)
                _exit(3);
            struct crypto_key k;
            bool created = false;
            uint8_t msg[1 + CRYPTO_KEY_LEN];
            if (crypto_keyfile_load_or_create(t.path, &k, &created, NULL) != IOT_OK)
                _exit(1);
            msg[0] = created ? 1 : 0;
            memcpy(msg + 1, k.bytes, CRYPTO_KEY_LEN);
            _exit(write(results[1], msg, sizeof msg) == (ssize_t)sizeof msg ? 0 : 2);
        }
    }
    close(start[0]);
    close(start[1]);
    close(results[1]);
    int creators = 0;
    uint8_t first[CRYPTO_KEY_LEN];
    for (int i = 0; i < N; i++) {
        uint8_t msg[1 + CRYPTO_KEY_LEN];
        assert_int_equal(read(results[0], msg, sizeof msg), (ssize_t)sizeof msg);
        creators += msg[0];
        if (i == 0)
            memcpy(first, msg + 1, CRYPTO_KEY_LEN);
        else
            assert_memory_equal(first, msg + 1, CRYPTO_KEY_LEN);
    }
    close(results[0]);
    for (int i = 0; i < N; i++) {
        int status = 0;
        assert_int_equal(waitpid(pids[i], &status, 0), pids[i]);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
    }
    assert_int_equal(creators, 1);
    struct crypto_key k;
    assert_int_equal(crypto_keyfile_load_or_create(t.path, &k, NULL, NULL), IOT_OK);
    assert_memory_equal(k.bytes, first, CRYPTO_KEY_LEN);
    tmpdir_remove(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_legacy_vector_encrypt),
        cmocka_unit_test(test_legacy_vector_open),
        cmocka_unit_test(test_legacy_wrong_key_is_an_error),
        cmocka_unit_test(test_legacy_tampered_is_an_error),
        cmocka_unit_test(test_legacy_plaintext_passes_through),
        cmocka_unit_test(test_legacy_ciphertext_without_keys_is_an_error),
        cmocka_unit_test(test_write_legacy),
        cmocka_unit_test(test_no_key_writes_plaintext_label),
        cmocka_unit_test(test_no_key_refuses_ciphertext_shaped_plaintext),
        cmocka_unit_test(test_gcm_foreign_vector),
        cmocka_unit_test(test_gcm_round_trip),
        cmocka_unit_test(test_gcm_tampering_fails),
        cmocka_unit_test(test_gcm_binds_owner),
        cmocka_unit_test(test_gcm_key_rotation),
        cmocka_unit_test(test_gcm_key_id_selects_key),
        cmocka_unit_test(test_unknown_algorithm),
        cmocka_unit_test(test_states_left_alone),
        cmocka_unit_test(test_key_parse),
        cmocka_unit_test(test_key_parse_errors),
        cmocka_unit_test(test_key_ids_differ),
        cmocka_unit_test(test_equal_and_random),
        cmocka_unit_test(test_keyfile_create_and_reload),
        cmocka_unit_test(test_keyfile_reads_given_key),
        cmocka_unit_test(test_keyfile_refused),
        cmocka_unit_test(test_keyfile_concurrent_creation),
    };
    return cmocka_run_group_tests(tests, 0, 0);
}
