/*
 * The "hello" Linux container of the end-to-end tests. Prints the line
 * "hello from linux" on stdout, then:
 *   (no argument)  exits 0;
 *   --exit N       exits with status N;
 *   --wait         waits for SIGTERM or SIGINT, prints "hello got SIGTERM"
 *                  (or SIGINT) on stdout and exits 0.
 * Any other argument is printed on stdout, one line each, before that.
 *
 * Built static by e2e/harness/containerd.rs: gcc -static -Os -o hello hello.c
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t got;

static void on_stop(int sig) { got = sig; }

int main(int argc, char **argv) {
    int wait = 0, status = 0;
    struct sigaction stop = {0};
    stop.sa_handler = on_stop;
    sigaction(SIGTERM, &stop, NULL);
    sigaction(SIGINT, &stop, NULL);
    printf("hello from linux\n");
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--wait") == 0) {
            wait = 1;
        } else if (strcmp(argv[i], "--exit") == 0 && i + 1 < argc) {
            status = atoi(argv[++i]);
        } else {
            printf("%s\n", argv[i]);
        }
    }
    fflush(stdout);
    if (wait) {
        while (!got) {
            pause();
        }
        printf("hello got %s\n", got == SIGTERM ? "SIGTERM" : "SIGINT");
        fflush(stdout);
    }
    return status;
}
