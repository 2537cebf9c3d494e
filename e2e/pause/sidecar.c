/*
 * The Linux sidecar of the mixed-pod tests: a container that shares its pod's
 * network namespace with a wasm container.
 *
 *   sidecar SERVE_PORT CALL_PORT PATH
 *
 * 1. Listens on 0.0.0.0:SERVE_PORT.
 * 2. Calls http://127.0.0.1:CALL_PORT PATH (HTTP/1.0: the body is not
 *    chunked) until it gets an answer (up to
 *    600 tries, 100 ms apart), and prints on stdout "sidecar got: " followed
 *    by the status line, then by each line of the body.
 * 3. Answers every request on SERVE_PORT with "hello from the sidecar"
 *    (HTTP/1.0, connection closed) until SIGTERM or SIGINT, then prints
 *    "sidecar got SIGTERM" (or SIGINT) and exits 0.
 *
 * Built static by e2e/harness/containerd.rs: gcc -static -Os -o sidecar sidecar.c
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static volatile sig_atomic_t got;

static void on_stop(int sig) { got = sig; }

static const char ANSWER[] = "hello from the sidecar\n";

/* One GET of PATH on 127.0.0.1:PORT; the whole answer in buf. Returns its length, or -1. */
static ssize_t get(int port, const char *path, char *buf, size_t size) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        close(fd);
        return -1;
    }
    char request[512];
    int n = snprintf(request, sizeof request, "GET %s HTTP/1.0\r\nHost: 127.0.0.1:%d\r\n\r\n",
                     path, port);
    if (write(fd, request, n) != n) {
        close(fd);
        return -1;
    }
    size_t len = 0;
    ssize_t r;
    while (len < size - 1 && (r = read(fd, buf + len, size - 1 - len)) > 0) len += r;
    close(fd);
    buf[len] = 0;
    return len > 0 ? (ssize_t)len : -1;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: sidecar SERVE_PORT CALL_PORT PATH\n");
        return 2;
    }
    int serve_port = atoi(argv[1]), call_port = atoi(argv[2]);
    struct sigaction stop = {0};
    stop.sa_handler = on_stop; /* no SA_RESTART: accept() returns EINTR */
    sigaction(SIGTERM, &stop, NULL);
    sigaction(SIGINT, &stop, NULL);
    setvbuf(stdout, NULL, _IOLBF, 0);

    int listener = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(serve_port)};
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(listener, 16) != 0) {
        perror("sidecar: listen");
        return 1;
    }

    static char answer[65536];
    ssize_t len = -1;
    for (int try = 0; try < 600 && len < 0 && !got; try++) {
        len = get(call_port, argv[3], answer, sizeof answer);
        if (len < 0) usleep(100 * 1000);
    }
    if (len < 0) {
        printf("sidecar got no answer from 127.0.0.1:%d\n", call_port);
    } else {
        char *body = strstr(answer, "\r\n\r\n");
        char *eol = strstr(answer, "\r\n");
        if (eol) *eol = 0;
        printf("sidecar got: %s\n", answer);
        if (body) {
            for (char *line = strtok(body + 4, "\n"); line; line = strtok(NULL, "\n")) printf("sidecar got: %s\n", line);
        }
    }

    while (!got) {
        /* Waits at most 200 ms at a time, so a signal that comes just before
         * the wait is seen at the next turn. */
        struct pollfd ready = {.fd = listener, .events = POLLIN};
        int n_ready = poll(&ready, 1, 200);
        if (n_ready <= 0) {
            if (n_ready < 0 && errno != EINTR) {
                perror("sidecar: poll");
                return 1;
            }
            continue;
        }
        int conn = accept(listener, NULL, NULL);
        if (conn < 0) {
            if (errno == EINTR) continue;
            perror("sidecar: accept");
            return 1;
        }
        char request[4096];
        size_t have = 0;
        ssize_t r;
        while (have < sizeof request - 1 && (r = read(conn, request + have, sizeof request - 1 - have)) > 0) {
            have += r;
            request[have] = 0;
            if (strstr(request, "\r\n\r\n")) break;
        }
        char head[128];
        int n = snprintf(head, sizeof head, "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n\r\n",
                         sizeof ANSWER - 1);
        if (write(conn, head, n) == n && write(conn, ANSWER, sizeof ANSWER - 1) == (ssize_t)(sizeof ANSWER - 1)) {
            printf("sidecar answered a request\n");
        }
        close(conn);
    }
    printf("sidecar got %s\n", got == SIGTERM ? "SIGTERM" : "SIGINT");
    return 0;
}
