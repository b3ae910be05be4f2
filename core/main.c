/* main.c - the aiorun daemon's command line. */
#include <stdio.h>
#include <string.h>

#include <aiorun/version.h>

#include "daemon.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: aiorun [--config FILE]        run the daemon (default config: aiorun.json)\n"
            "       aiorun --check-config FILE    validate a config and its policies, then exit\n"
            "       aiorun --version              print the version and plugin ABI\n");
}

int main(int argc, char **argv)
{
    const char *config_path = "aiorun.json";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--version") == 0) {
            printf("aiorun %s (plugin ABI %d.%d)\n", AIORUN_VERSION_STRING, AIORUN_ABI_MAJOR, AIORUN_ABI_MINOR);
            return 0;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--check-config") == 0 && i + 1 < argc) {
            return daemon_check_config(argv[i + 1]);
        } else if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
            config_path = argv[++i];
        } else {
            fprintf(stderr, "aiorun: unknown or incomplete argument \"%s\"\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    return daemon_run(config_path);
}
