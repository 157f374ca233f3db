/* jadd: cJSON_Add*ToObject for keys that are string literals.  cJSON's own
 * functions copy the key into a block of its own for every member added;
 * these point the member at the literal instead (cJSON_AddItemToObjectCS,
 * which marks it cJSON_StringIsConst, so that cJSON_Delete does not free it
 * and cJSON_Duplicate shares it).  A policy call or a queue manager notice
 * builds dozens of members, so that is as many blocks fewer each time.
 * The key must be a literal: the macros paste "" before it, which does not
 * compile otherwise.  Each returns the item added, NULL (and the item
 * freed) when it cannot be made or added, as cJSON's functions do. */
#ifndef KUMO_JADD_H
#define KUMO_JADD_H
#include <cjson/cJSON.h>

static inline cJSON *jadd_item_(cJSON *o, const char *key, cJSON *item)
{
	if (!item)
		return NULL;
	if (!cJSON_AddItemToObjectCS(o, key, item)) {
		cJSON_Delete(item);
		return NULL;
	}
	return item;
}

#define jadd_item(o, key, item) jadd_item_((o), "" key, (item))
#define jadd_string(o, key, s) jadd_item_((o), "" key, cJSON_CreateString(s))
#define jadd_number(o, key, n) jadd_item_((o), "" key, cJSON_CreateNumber(n))
#define jadd_bool(o, key, b) jadd_item_((o), "" key, cJSON_CreateBool(b))
#define jadd_null(o, key) jadd_item_((o), "" key, cJSON_CreateNull())
#define jadd_object(o, key) jadd_item_((o), "" key, cJSON_CreateObject())
#define jadd_array(o, key) jadd_item_((o), "" key, cJSON_CreateArray())

#endif
