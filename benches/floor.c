/* The C side of conjure's benchmarks (benches/launch.rs compiles it at bench time, once with
 * the system's gcc against glibc, dynamically linked, and once with musl-gcc, static, like
 * conjure's shipped binary).
 *
 *   floor PROG ARGS...   the C floor of a launch: a close-on-exec pipe, fork, setsid, fork,
 *                        exec; the launcher exits 0 once the pipe closes (the exec happened),
 *                        1 when the grandchild wrote an errno instead. Nothing else.
 *   ready FILE           write "NS PID" (CLOCK_MONOTONIC nanoseconds, then the pid) to FILE,
 *                        send READY=1 to $NOTIFY_SOCKET, then wait to be killed
 *   listen PORT FILE     listen on 127.0.0.1:PORT, write "NS PID" to FILE just after listen(),
 *                        then wait to be killed
 *   flood N              send READY=1, then N datagrams "STATUS=i" to $NOTIFY_SOCKET (blocking
 *                        sends, as libsystemd's), then "STATUS=done", then exit 0
 *   orphans N            N times: fork a child that forks a grandchild and exits; reap the
 *                        child; the grandchild exits at once, an orphan for PID 1 to reap
 *   pause                wait to be killed
 *
 * Written for the benchmarks only: failures print a line and exit 2.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) {
    fprintf(stderr, "floor: %s: %s\n", what, strerror(errno));
    exit(2);
}

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void stamp(const char *file, long long ns) {
    char buf[64];
    int n = snprintf(buf, sizeof buf, "%lld %d\n", ns, (int)getpid());
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", file);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, buf, n) != n || close(fd) != 0 || rename(tmp, file) != 0) die(file);
}

static int notify_socket(struct sockaddr_un *addr, socklen_t *len) {
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path) { errno = EINVAL; die("NOTIFY_SOCKET"); }
    memset(addr, 0, sizeof *addr);
    addr->sun_family = AF_UNIX;
    size_t n = strlen(path);
    if (n >= sizeof addr->sun_path) { errno = ENAMETOOLONG; die("NOTIFY_SOCKET"); }
    memcpy(addr->sun_path, path, n);
    if (path[0] == '@') addr->sun_path[0] = 0;
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    return fd;
}

static void send_msg(int fd, struct sockaddr_un *addr, socklen_t len, const char *msg) {
    while (sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)addr, len) < 0) {
        if (errno != EINTR) die("sendto");
    }
}

static void wait_forever(void) {
    for (;;) pause();
}

int main(int argc, char **argv) {
    if (argc < 2) { errno = EINVAL; die("usage"); }
    const char *mode = argv[1];
    if (!strcmp(mode, "floor") && argc >= 3) {
        int p[2];
        if (pipe2(p, O_CLOEXEC) != 0) die("pipe2");
        pid_t child = fork();
        if (child < 0) die("fork");
        if (child == 0) {
            setsid();
            pid_t grandchild = fork();
            if (grandchild != 0) _exit(grandchild < 0);
            execv(argv[2], argv + 2);
            int e = errno;
            (void)!write(p[1], &e, sizeof e);
            _exit(127);
        }
        close(p[1]);
        waitpid(child, NULL, 0);
        int e;
        ssize_t n;
        while ((n = read(p[0], &e, sizeof e)) < 0 && errno == EINTR) {}
        return n == 0 ? 0 : 1;
    }
    if (!strcmp(mode, "ready") && argc == 3) {
        struct sockaddr_un addr;
        socklen_t len;
        int fd = notify_socket(&addr, &len);
        stamp(argv[2], now_ns());
        send_msg(fd, &addr, len, "READY=1");
        wait_forever();
    }
    if (!strcmp(mode, "listen") && argc == 4) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[2]))};
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (bind(fd, (struct sockaddr *)&sin, sizeof sin) != 0) die("bind");
        if (listen(fd, 128) != 0) die("listen");
        stamp(argv[3], now_ns());
        wait_forever();
    }
    if (!strcmp(mode, "flood") && argc == 3) {
        struct sockaddr_un addr;
        socklen_t len;
        int fd = notify_socket(&addr, &len);
        long n = atol(argv[2]);
        char msg[64];
        send_msg(fd, &addr, len, "READY=1");
        for (long i = 0; i < n; i++) {
            snprintf(msg, sizeof msg, "STATUS=%ld", i);
            send_msg(fd, &addr, len, msg);
        }
        send_msg(fd, &addr, len, "STATUS=done");
        return 0;
    }
    if (!strcmp(mode, "orphans") && argc == 3) {
        long n = atol(argv[2]);
        for (long i = 0; i < n; i++) {
            pid_t child = fork();
            if (child < 0) die("fork");
            if (child == 0) {
                pid_t grandchild = fork();
                _exit(grandchild < 0);
            }
            while (waitpid(child, NULL, 0) < 0 && errno == EINTR) {}
        }
        return 0;
    }
    if (!strcmp(mode, "pause")) wait_forever();
    errno = EINVAL;
    die(mode);
}
