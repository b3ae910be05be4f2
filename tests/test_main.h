/* test_main.h - the main() every cmocka test binary shares: an optional first argument runs
 * only the case of that name (CTest registers one entry per case this way). */
#ifndef AIORUN_TEST_MAIN_H
#define AIORUN_TEST_MAIN_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#define AR_TEST_MAIN(tests, setup, teardown)                              \
    int main(int argc, char **argv)                                       \
    {                                                                     \
        if (argc > 1)                                                     \
            cmocka_set_test_filter(argv[1]);                              \
        return cmocka_run_group_tests(tests, setup, teardown);            \
    }

#endif
