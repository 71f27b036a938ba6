#include <stdio.h>
int main(void)
{
    puts("iot-manager: not wired yet");
    return 1;
}
