// tests/test_config.c
#include "test.h"

const TestCase tests_config[] = {
    {0, 0},
};
