#include <stdio.h>

int main(void) {
        puts("hello from the mkosi build script, version 1");
        return 0;
}
