/* The generated-key file: one base64 line holding 32 random bytes, mode 0600. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "crypto/crypto_internal.h"
#include "iot-manager/b64.h"
#include "iot-manager/crypto.h"

/* A key file is 45 bytes; anything much larger is not ours. */
#define KEYFILE_MAX      1024
#define KEYFILE_PATH_MAX 4096
/* How long a process that lost the creation race waits for the winner to finish writing (only
 * relevant where hard links are unsupported and the file is written in place). */
#define KEYFILE_RACE_TRIES    100
#define KEYFILE_RACE_SLEEP_NS 10000000L

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* IOT_ERR_NOT_FOUND when the file does not exist (no message); *empty tells a zero-length file. */
static enum iot_err keyfile_read(const char *path, struct crypto_key *out, bool *empty,
                                 struct iot_error *err)
{
    char buf[KEYFILE_MAX + 1];
    size_t n = 0;
    enum iot_err rc;
    struct stat st;
    *empty = false;

    int fd = open(path, O_RDONLY | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return IOT_ERR_NOT_FOUND;
        return iot_error_set(err, IOT_ERR_IO, "cannot open key file %s: %s", path, strerror(errno));
    }
    /* fstat on the open descriptor: the mode checked is the mode of the file actually read */
    if (fstat(fd, &st) != 0) {
        rc = iot_error_set(err, IOT_ERR_IO, "cannot stat key file %s: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = iot_error_set(err, IOT_ERR_CONFIG, "key file %s is not a regular file", path);
        goto out;
    }
    if (st.st_mode & (S_IRWXG | S_IRWXO)) {
        rc = iot_error_set(err, IOT_ERR_CONFIG,
                           "key file %s is accessible by group or others (mode %04o); it must be "
                           "0600 or stricter",
                           path, (unsigned)(st.st_mode & 07777));
        goto out;
    }
    for (;;) {
        ssize_t r = read(fd, buf + n, sizeof buf - n);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            rc = iot_error_set(err, IOT_ERR_IO, "cannot read key file %s: %s", path,
                               strerror(errno));
            goto out;
        }
        if (r == 0)
            break;
        n += (size_t)r;
        if (n == sizeof buf) {
            rc = iot_error_set(err, IOT_ERR_CONFIG, "key file %s is too large", path);
            goto out;
        }
    }
    if (n == 0) {
        *empty = true;
        rc = iot_error_set(err, IOT_ERR_CONFIG, "key file %s is empty", path);
        goto out;
    }
    if (memchr(buf, '\0', n)) {
        rc = iot_error_set(err, IOT_ERR_CONFIG, "key file %s is not base64 text", path);
        goto out;
    }
    /* editors and `echo` add a final newline; surrounding blanks carry no meaning */
    while (n > 0 && is_space(buf[n - 1]))
        n--;
    buf[n] = '\0';
    size_t start = 0;
    while (start < n && is_space(buf[start]))
        start++;
    rc = crypto_key_parse(buf + start, out, err);
    if (rc != IOT_OK)
        iot_error_prefix(err, "key file %s: ", path);
out:
    OPENSSL_cleanse(buf, sizeof buf);
    close(fd);
    return rc;
}

static bool write_all(int fd, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return false;
        }
        p += w;
        len -= (size_t)w;
    }
    return true;
}

/* Best effort: makes the new directory entry durable. */
static void fsync_parent_dir(const char *path)
{
    char dir[KEYFILE_PATH_MAX];
    const char *slash = strrchr(path, '/');
    if (!slash) {
        strcpy(dir, ".");
    } else if (slash == path) {
        strcpy(dir, "/");
    } else {
        size_t len = (size_t)(slash - path);
        if (len >= sizeof dir)
            return;
        memcpy(dir, path, len);
        dir[len] = '\0';
    }
    int fd = open(dir, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    (void)fsync(fd);
    close(fd);
}

/* Writes `text` to `path` only if `path` does not exist, and so that no other process can ever
 * see it partially written: the content goes to a private temporary file first and is then
 * hard-linked into place, which fails with EEXIST exactly like O_EXCL when another process
 * won. Filesystems without hard links fall back to O_EXCL on the final name.
 * IOT_ERR_CONFLICT (no message) when the file appeared meanwhile. */
static enum iot_err keyfile_publish(const char *path, const char *text, size_t len,
                                    struct iot_error *err)
{
    char tmp[KEYFILE_PATH_MAX];
    int n = snprintf(tmp, sizeof tmp, "%s.tmp.XXXXXX", path);
    if (n < 0 || (size_t)n >= sizeof tmp)
        return iot_error_set(err, IOT_ERR_CONFIG, "key file path is too long");

    int fd = mkstemp(tmp); /* creates 0600 whatever the umask */
    if (fd < 0)
        return iot_error_set(err, IOT_ERR_IO, "cannot create key file %s: %s", path,
                             strerror(errno));
    if (fchmod(fd, S_IRUSR | S_IWUSR) != 0 || !write_all(fd, text, len) || fsync(fd) != 0) {
        int e = errno;
        close(fd);
        unlink(tmp);
        return iot_error_set(err, IOT_ERR_IO, "cannot write key file %s: %s", path, strerror(e));
    }
    if (close(fd) != 0) {
        int e = errno;
        unlink(tmp);
        return iot_error_set(err, IOT_ERR_IO, "cannot write key file %s: %s", path, strerror(e));
    }
    int rc = link(tmp, path);
    int link_errno = errno;
    unlink(tmp);
    if (rc == 0) {
        fsync_parent_dir(path);
        return IOT_OK;
    }
    if (link_errno == EEXIST)
        return IOT_ERR_CONFLICT;
    if (link_errno != EPERM && link_errno != ENOTSUP && link_errno != EOPNOTSUPP &&
        link_errno != ENOSYS && link_errno != EMLINK)
        return iot_error_set(err, IOT_ERR_IO, "cannot create key file %s: %s", path,
                             strerror(link_errno));

    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOCTTY | O_CLOEXEC, S_IRUSR | S_IWUSR);
    if (fd < 0) {
        if (errno == EEXIST)
            return IOT_ERR_CONFLICT;
        return iot_error_set(err, IOT_ERR_IO, "cannot create key file %s: %s", path,
                             strerror(errno));
    }
    if (fchmod(fd, S_IRUSR | S_IWUSR) != 0 || !write_all(fd, text, len) || fsync(fd) != 0) {
        int e = errno;
        close(fd);
        /* an empty or partial key file would stop every later start: remove it */
        unlink(path);
        return iot_error_set(err, IOT_ERR_IO, "cannot write key file %s: %s", path, strerror(e));
    }
    if (close(fd) != 0) {
        int e = errno;
        unlink(path);
        return iot_error_set(err, IOT_ERR_IO, "cannot write key file %s: %s", path, strerror(e));
    }
    fsync_parent_dir(path);
    return IOT_OK;
}

static enum iot_err keyfile_create(const char *path, struct crypto_key *out, struct iot_error *err)
{
    struct crypto_key key;
    char text[B64_ENCODED_LEN(CRYPTO_KEY_LEN) + 2];
    enum iot_err rc;
    memset(&key, 0, sizeof key);

    if (crypto_random(key.bytes, sizeof key.bytes) != IOT_OK) {
        rc = iot_error_set(err, IOT_ERR_CRYPTO, "cannot generate an encryption key");
        goto out;
    }
    if (!crypto_key_id_compute(key.bytes, &key.id)) {
        rc = iot_error_set(err, IOT_ERR_CRYPTO, "cannot compute the key id");
        goto out;
    }
    long len = b64_encode(key.bytes, sizeof key.bytes, text, sizeof text - 1, false);
    if (len < 0) {
        rc = iot_error_set(err, IOT_ERR_INTERNAL, "key encoding does not fit");
        goto out;
    }
    text[len++] = '\n';
    text[len] = '\0';
    rc = keyfile_publish(path, text, (size_t)len, err);
    if (rc == IOT_OK)
        *out = key;
out:
    OPENSSL_cleanse(&key, sizeof key);
    OPENSSL_cleanse(text, sizeof text);
    return rc;
}

enum iot_err crypto_keyfile_load_or_create(const char *path, struct crypto_key *out, bool *created,
                                           struct iot_error *err)
{
    bool lost_race = false;
    if (created)
        *created = false;
    if (!path || !*path)
        return iot_error_set(err, IOT_ERR_CONFIG, "key file path is empty");

    for (int attempt = 0; attempt < KEYFILE_RACE_TRIES; attempt++) {
        bool empty = false;
        enum iot_err rc = keyfile_read(path, out, &empty, err);
        if (rc == IOT_ERR_NOT_FOUND) {
            rc = keyfile_create(path, out, err);
            if (rc == IOT_OK) {
                if (created)
                    *created = true;
                return IOT_OK;
            }
            if (rc != IOT_ERR_CONFLICT)
                return rc;
            lost_race = true; /* another process created it first: use its key */
            continue;
        }
        if (rc == IOT_ERR_CONFIG && empty && lost_race) {
            struct timespec ts = {0, KEYFILE_RACE_SLEEP_NS};
            nanosleep(&ts, NULL);
            continue;
        }
        return rc;
    }
    return iot_error_set(err, IOT_ERR_IO, "key file %s: still being written by another process",
                         path);
}
