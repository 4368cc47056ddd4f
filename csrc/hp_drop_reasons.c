/* hp_drop_reasons.c - the drop reasons' labels, generated from the lists in hp_drop_reasons.h. */
#include "hp_drop_reasons.h"

#define HP_REASON_NAME_(name, label) [HP_R_##name] = label,
const char *const hp_reason_names[HP_R_COUNT] = {HP_DROP_REASONS(HP_REASON_NAME_)};
#undef HP_REASON_NAME_

#define HP_DP_REASON_NAME_(name, label) [HP_D_##name] = label,
const char *const hp_dp_reason_names[HP_D_COUNT] = {HP_DP_DROP_REASONS(HP_DP_REASON_NAME_)};
#undef HP_DP_REASON_NAME_
