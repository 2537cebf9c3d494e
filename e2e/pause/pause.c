/*
 * The pod sandbox ("pause") program of the end-to-end tests' Linux images:
 * it holds the pod's namespaces and does nothing else. SIGTERM and SIGINT end
 * it with status 0; it reaps any child re-parented to it (it is PID 1 of the
 * pod when the pod shares a PID namespace).
 *
 * Built static by e2e/harness/containerd.rs: gcc -static -Os -o pause pause.c
 */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) {
    (void)sig;
    _exit(0);
}

static void on_child(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction stop = {0}, child = {0};
    stop.sa_handler = on_stop;
    child.sa_handler = on_child;
    child.sa_flags = SA_NOCLDSTOP;
    if (sigaction(SIGTERM, &stop, NULL) || sigaction(SIGINT, &stop, NULL) || sigaction(SIGCHLD, &child, NULL)) {
        return 1;
    }
    for (;;) {
        pause();
    }
}
