/* placeholder until the echo plugin lands */
#include <aiorun/plugin.h>
