#include <stdio.h>
int main(void) { puts("eellm"); return 0; }
