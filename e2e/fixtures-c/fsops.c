/* Fixture `fsops-c`: the `fsops` fixture in C, compiled against wasi-libc
 * (clang --target=wasm32-wasi): the same arguments, the same lines, with
 * `strerror` in place of Rust's error kind.
 *
 * - `read:PATH` prints `read PATH: CONTENT` or `read PATH failed: errno=N (MESSAGE)`;
 * - `write:PATH=CONTENT` prints `wrote PATH` or `write PATH failed: errno=N (MESSAGE)`.
 *
 * Exits 0. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void fail(const char *what, const char *path) {
    int error = errno;
    printf("%s %s failed: errno=%d (%s)\n", what, path, error, strerror(error));
}

static void read_file(const char *path) {
    FILE *file = fopen(path, "r");
    if (file == NULL) {
        fail("read", path);
        return;
    }
    char content[4096];
    size_t length = fread(content, 1, sizeof content - 1, file);
    content[length] = '\0';
    fclose(file);
    printf("read %s: %s\n", path, content);
}

static void write_file(char *spec) {
    char *content = strchr(spec, '=');
    if (content != NULL) {
        *content++ = '\0';
    } else {
        content = "";
    }
    FILE *file = fopen(spec, "w");
    if (file == NULL) {
        fail("write", spec);
        return;
    }
    fputs(content, file);
    if (fclose(file) != 0) {
        fail("write", spec);
        return;
    }
    printf("wrote %s\n", spec);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "read:", 5) == 0) {
            read_file(argv[i] + 5);
        } else if (strncmp(argv[i], "write:", 6) == 0) {
            write_file(argv[i] + 6);
        } else {
            printf("unknown operation \"%s\"\n", argv[i]);
        }
    }
    return 0;
}
