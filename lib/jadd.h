/* jadd: adding and finding object members by a key that is a string
 * literal.
 * cJSON's Add*ToObject functions copy the key into a block of their own for
 * every member added; jadd_* point the member at the literal instead
 * (cJSON_AddItemToObjectCS, which marks it cJSON_StringIsConst, so that
 * cJSON_Delete does not free it and cJSON_Duplicate shares it).  A policy
 * call or a queue manager notice builds dozens of members, so that is as
 * many blocks fewer each time.  Each returns the item added, NULL (and the
 * item freed) when it cannot be made or added, as cJSON's functions do.
 * jget finds a member as cJSON_GetObjectItemCaseSensitive does (the first
 * with that key; none past a member without a key), comparing each key's
 * first byte before calling strcmp: most members differ there, and their
 * readers look up dozens per message.  jfind is the same for a key that is
 * not a literal, and jdetach and jdelete take a member out the same way.
 * The macros paste "" before the key, so that anything but a literal does
 * not compile. */
#ifndef KUMO_JADD_H
#define KUMO_JADD_H
#include <string.h>
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

static inline cJSON *jfind(const cJSON *o, const char *key)
{
	if (!o || !key)
		return NULL;
	for (cJSON *c = o->child; c && c->string; c = c->next)
		if (c->string[0] == key[0] && strcmp(c->string, key) == 0)
			return c;
	return NULL;
}

#define jget(o, key) jfind((o), "" key)

/* cJSON_DetachItemFromObjectCaseSensitive and
 * cJSON_DeleteItemFromObjectCaseSensitive, finding the member as jfind. */
static inline cJSON *jdetach(cJSON *o, const char *key)
{
	cJSON *c = jfind(o, key);
	return c ? cJSON_DetachItemViaPointer(o, c) : NULL;
}

static inline void jdelete(cJSON *o, const char *key)
{
	cJSON_Delete(jdetach(o, key));
}
#define jadd_item(o, key, item) jadd_item_((o), "" key, (item))
#define jadd_string(o, key, s) jadd_item_((o), "" key, cJSON_CreateString(s))
#define jadd_number(o, key, n) jadd_item_((o), "" key, cJSON_CreateNumber(n))
#define jadd_bool(o, key, b) jadd_item_((o), "" key, cJSON_CreateBool(b))
#define jadd_null(o, key) jadd_item_((o), "" key, cJSON_CreateNull())
#define jadd_object(o, key) jadd_item_((o), "" key, cJSON_CreateObject())
#define jadd_array(o, key) jadd_item_((o), "" key, cJSON_CreateArray())

#endif
