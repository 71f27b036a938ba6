/* Placeholder translation unit for a layer that has no sources yet. */
typedef int iotm_empty_translation_unit;
