/*
 * sim_main.c - aiorun-sim: a local stand-in for external HTTP APIs, for tests and connector
 * authors. Usage: aiorun-sim [--port N] [--port-file FILE] [--quiet]
 * Listens on 127.0.0.1 only; prints "aiorun-sim listening on http://127.0.0.1:PORT" as the first
 * line on stdout; SIGTERM or SIGINT stops it with exit status 0. See README.md.
 */
#include "sim_server.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *out)
{
    fprintf(out, "usage: aiorun-sim [--port N] [--port-file FILE] [--quiet]\n"
                 "  --port N          listen on 127.0.0.1:N (default 0: any free port)\n"
                 "  --port-file FILE  write the chosen port to FILE (atomically)\n"
                 "  --quiet           no request log on stderr\n");
}

/* Write the port to a temporary name, then rename: a reader never sees a partial file. */
static int write_port_file(const char *path, int port)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
        return -1;
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -1;
    int ok = fprintf(f, "%d\n", port) > 0;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    sim_server_opts opts = {.port = 0, .quiet = false};
    const char *port_file = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
            char *end;
            errno = 0;
            long port = strtol(argv[++i], &end, 10);
            if (errno || *end || end == argv[i] || port < 0 || port > 65535) {
                fprintf(stderr, "aiorun-sim: bad port '%s'\n", argv[i]);
                return 2;
            }
            opts.port = (int)port;
        } else if (strcmp(argv[i], "--port-file") == 0 && i + 1 < argc) {
            port_file = argv[++i];
        } else if (strcmp(argv[i], "--quiet") == 0) {
            opts.quiet = true;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }

    /* Block the stop signals in every thread (the server's threads inherit the mask) and take
       them synchronously here: no handler, no global flag. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN);

    char err[256];
    sim_server *srv = sim_server_start(&opts, err, sizeof err);
    if (!srv) {
        fprintf(stderr, "aiorun-sim: %s\n", err);
        return 1;
    }
    printf("aiorun-sim listening on http://127.0.0.1:%d\n", sim_server_port(srv));
    fflush(stdout);
    if (port_file && write_port_file(port_file, sim_server_port(srv)) != 0) {
        fprintf(stderr, "aiorun-sim: cannot write %s: %s\n", port_file, strerror(errno));
        sim_server_stop(srv);
        return 1;
    }

    int sig = 0;
    while (sigwait(&stop, &sig) != 0)
        ;
    sim_server_stop(srv);
    return 0;
}
